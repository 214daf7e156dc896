"""The config command group: show the default or resolved configuration."""

from __future__ import annotations

import typer

from fedhex_hep.cli.common import ConfigOpt, SetOpt, _load


config_app = typer.Typer(help="Show the configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show_cmd(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the default configuration (TOML, with its comments), or the resolved one with --config/--set."""
    from fedhex_hep.config import default_config_text

    if config is None and not overrides:
        typer.echo(default_config_text(), nl=False)
        return
    typer.echo(_load(config, overrides).to_toml(), nl=False)
