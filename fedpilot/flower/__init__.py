"""The Flower deployment driver: a ServerApp and a ClientApp over fedpilot's core (SuperLink and
SuperNodes talking gRPC). ``codec`` turns fedpilot's messages into Flower RecordDicts and back;
``transport`` is the Transport the ServerApp hands to ``Server.run_round``."""
