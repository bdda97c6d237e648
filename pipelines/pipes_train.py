"""The ``pepd_student`` asset's subprocess: ``dd3g_core.distill.train`` with rank 0 speaking Dagster Pipes.

    accelerate launch … -m pipelines.pipes_train --config …   (same arguments as dd3g_core.distill.train)

Rank 0 (``RANK`` from the launcher) opens the Pipes session when Dagster started the process,
streams the trainer's log lines and reports the final materialization (metadata + the weights'
hash as data version). Other ranks, or a launch outside Dagster, run the plain trainer.
"""

import os
import sys
from typing import Any

from dd3g_core.distill.train import main as train_main


class PipesReporter:
    def __init__(self, pipes):
        self.pipes = pipes

    def log(self, message: str) -> None:
        self.pipes.log.info(message)

    def materialize(self, metadata: dict[str, Any], data_version: str) -> None:
        typed = {
            k: (
                {"raw_value": v, "type": "json"}
                if isinstance(v, (dict, list))
                else {"raw_value": v, "type": "path"}
                if k == "checkpoint"
                else v
            )
            for k, v in metadata.items()
        }
        self.pipes.report_asset_materialization(metadata=typed, data_version=data_version)


def main(argv: list[str] | None = None) -> int:
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if int(os.environ.get("RANK", "0")) != 0 or not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return train_main(argv)
    with open_dagster_pipes() as pipes:
        return train_main(argv, reporter=PipesReporter(pipes))


if __name__ == "__main__":
    sys.exit(main())
