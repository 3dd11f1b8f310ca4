"""The CLI flags of device selection, secret sampling and compressed updates, defined once.

``fedge run start`` takes all four; ``fedge simulate`` takes ``--compress`` and
``--secret-sampling`` (its daemons report no tags or signals, so a filter could only fail).
Each flag becomes one run-config key; :class:`fedge.server.run_settings.RunSettings` checks it.
"""

from __future__ import annotations

from typing import Annotated

import typer

SELECT_OPT = Annotated[
    str | None,
    typer.Option(
        "--select", help='sample only devices with these properties, e.g. "region=eu,accelerator=cuda"'
    ),
]
REQUIRE_OPT = Annotated[
    str | None,
    typer.Option("--require", help="signals a device must report yes: charging, idle, unmetered"),
]
SECRET_SAMPLING_OPT = Annotated[
    bool,
    typer.Option(
        "--secret-sampling", help="sample nodes from the OS's CSPRNG (DP amplification by sampling)"
    ),
]
COMPRESS_OPT = Annotated[
    str | None, typer.Option("--compress", help="devices send compressed updates: int8, int4 or topk:F")
]


def fleet_sets(
    select: str | None = None,
    require: str | None = None,
    secret_sampling: bool = False,
    compress: str | None = None,
) -> list[str]:
    """The flags given, as run-config assignments (quoted: a select list holds commas and '=')."""
    sets = [
        f"{key}={value}"
        for key, value in (("select", select), ("require", require), ("compress", compress))
        if value
    ]
    return [*sets, *(["secret-sampling=true"] if secret_sampling else [])]
