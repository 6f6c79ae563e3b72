"""A moto server standing in for AWS (`AWS_ENDPOINT_URL`), with `aws cloudformation deploy` working.

`python -m pipelines.local.moto_server -H 127.0.0.1 -p PORT` is `python -m moto.server` with the
change-set patch installed (pipelines/local/cfn_patch.py): what the deploy.sh and remote-run tests
talk to, and what a user can point the AWS CLI at to rehearse a deployment offline.
`InProcessMotoServer` is the gate's: moto's backends in this process, served on a thread.
"""

from __future__ import annotations

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

SHUTDOWN_POLL_SECONDS = 0.05


class InProcessMotoServer:
    """moto's `ThreadedMotoServer`, bound on 127.0.0.1 at once and stopped within 50 ms: werkzeug's
    default 0.5 s shutdown poll cost every `sagegate run` half a second at the end of its gate."""

    def __init__(self) -> None:
        application = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, application, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as serve

    from pipelines.local import cfn_patch

    cfn_patch.install()
    serve(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
