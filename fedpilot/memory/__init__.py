"""Memory: measure a training step's real peak (``measure``), predict it for any set of LoRA
modules (``costmodel``), fitted on the real model (``calibrate``) or from its config alone
(``analytic``), and checked against measurement (``validate``)."""
