"""
twistd plugin glue: command-line options and L{makeService}.

This is the only module that imports the global reactor; it passes it down
to everything it builds.
"""

from __future__ import annotations

import os
import sys
from typing import Any, cast

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorThreads
from twisted.python import usage

from clickpass import config as configmod
from clickpass._version import __version__
from clickpass.datadir import secure_data_dir


class Options(usage.Options):
    """Options for C{twistd clickpass}."""

    optParameters = [
        ["config", "c", None, "TOML configuration file (default: the embedded single node)."],
    ]

    def opt_version(self) -> None:
        """Print the Clickpass version and exit."""
        print(f"clickpass {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        # A configuration that cannot be used stops twistd here, with one
        # clear line and no usage dump or traceback.
        try:
            settings = configmod.load(self["config"])
            configmod.check_files(settings)
            # Before the node creates anything: everything it makes is private.
            secure_data_dir(settings)
            secret = configmod.master_secret(settings, create=True)
        except configmod.ConfigError as e:
            sys.stderr.write(f"clickpass: configuration error: {e}\n")
            raise SystemExit(1) from None
        except OSError as e:
            sys.stderr.write(f"clickpass: cannot prepare {e.filename}: {e.strerror}\n")
            raise SystemExit(1) from None
        self["settings"] = settings
        self["secret"] = secret


def makeService(options: Options) -> IService:
    """Build the node's service tree from its configuration."""
    from clickpass.epoll_reactor import install_unless_chosen

    install_unless_chosen()
    from twisted.internet import reactor

    from clickpass.node import Node
    from clickpass.storage.sql import open_storage

    settings = options["settings"]
    # Opening makes the data directory's database file and reads the
    # password file (connections are made once the reactor runs); building
    # the node reads the files its services name (the mail transport's).
    try:
        storage = open_storage(cast(IReactorThreads, reactor), settings)
        node = Node(reactor, settings, options["secret"], storage)
    except configmod.ConfigError as e:
        sys.stderr.write(f"clickpass: configuration error: {e}\n")
        raise SystemExit(1) from None

    def exit_if_failed(*_: Any) -> None:
        # twistd exits 0 whenever the reactor stops; a node that could not
        # start must exit non-zero so a supervisor sees the failure.
        if node.exit_code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(node.exit_code)

    reactor.addSystemEventTrigger("after", "shutdown", exit_if_failed)
    return node
