"""In-process federation: every client is simulated on one machine over one shared base model.

A thin driver: it builds the federation (:func:`fedpilot.federation.build_federation`: data, model,
partitions, calibrated cost model, strategy, server), then drives the rounds with an in-process
transport (:func:`fedpilot.federation.drive_rounds`) and records what each round returns.
"""

from __future__ import annotations

from pathlib import Path

from fedpilot.config import Config, parse_config
from fedpilot.core.errors import FedpilotError
from fedpilot.federation import RunResult, build_federation, client_record_counts, drive_rounds, prepare_out_dir, run_header
from fedpilot.runtime.checkpoint import CHECKPOINT, load_checkpoint


def run_simulation(
    config: Config | None, out_dir: Path | None = None, progress: bool = True, *, overwrite: bool = False, resume: bool = False
) -> RunResult:
    """Run ``config.federation.rounds`` rounds; results and a checkpoint are saved after every round.

    ``resume``: continue the run in ``out_dir`` from its last checkpoint, with the config stored
    there (``config``, if given, must equal it). The resumed run ends exactly as an uninterrupted one.
    """
    checkpoint = None
    if resume:
        if out_dir is None:
            raise FedpilotError("resume needs the run's folder")
        out_dir = Path(out_dir)
        checkpoint = load_checkpoint(out_dir)
        stored = parse_config(checkpoint.results.get("config"), f"{out_dir / CHECKPOINT} config")
        if config is not None and config != stored:
            raise FedpilotError(f"--config differs from the config of the run in {str(out_dir)!r}; resume without --config")
        config = stored
    if config is None:
        raise FedpilotError("no config given")
    out_dir = Path(out_dir or config.output_dir)
    prepare_out_dir(out_dir, overwrite=overwrite, resume=resume)
    federation = build_federation(config, progress)
    data = federation.data
    clients = [
        {
            "cid": info.cid,
            "num_samples": info.num_samples,
            "budget_bytes": info.budget_bytes,
            **client_record_counts(federation.clients[info.cid], len(data.label_names)),
        }
        for info in federation.infos
    ]
    header = run_header(config, data, federation.model, federation.server, clients, federation.cost_model, federation.calibration_cached)
    return drive_rounds(config, federation.model, federation.server, federation.transport(progress), out_dir, header, progress, checkpoint)
