"""moto's server, answering one request at a time.

moto checks a DynamoDB condition and then writes in two Python steps, so two concurrent
conditional writes to one item can both pass (the suite saw 29 of 32 compare-and-set
increments land). DynamoDB itself applies each conditional write to an item atomically; a
lock around every request gives the emulator that guarantee too.

With `keep-alive`, connections stay open between requests, as AWS's endpoints keep them:
served by waitress (from PyPI) instead of werkzeug's server, which closes every connection.

Usage: python3 scripts/moto_serial.py HOST PORT [keep-alive]
"""

import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            # The body is produced inside the lock: moto builds it while handling the request.
            return list(app(environ, start_response))

    if sys.argv[3:] == ["keep-alive"]:
        import waitress

        waitress.serve(serialized, host=host, port=port, threads=8, _quiet=True)
    else:
        run_simple(host, port, serialized, threaded=True)


if __name__ == "__main__":
    main()
