"""The ``hep2`` command: thin Typer commands over the service layer, the analysis core and training.

Every command module registers its commands with decorators on the Typer objects of :mod:`cli.apps`;
:mod:`cli.main` imports the modules and mounts the groups. Nothing else registers commands.
"""
