"""``python -m fedge`` = the ``fedge`` command."""

from fedge.cli import main

if __name__ == "__main__":  # spawned run workers re-import __main__: never re-run the CLI there
    main()
