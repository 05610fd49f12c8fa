"""A real S3-compatible server on 127.0.0.1 for the tests: moto in server mode.

The fixture points every S3 client at it through the standard AWS environment variables, so s3fs
in the test process and in `vlpipe run` subprocesses (which inherit the environment) all talk to
the same local server: `AWS_ENDPOINT_URL` is honoured by botocore/aiobotocore, hence by s3fs and by
`fsspec.url_to_fs("s3://...")` everywhere, with no vlpipe-specific hook.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]

    def fs(self):
        """A fresh s3fs filesystem (no cached listings from earlier calls)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="needs moto[server] (pip install 'vlpipe[test]')")
    pytest.importorskip("s3fs", reason="needs s3fs (pip install 'vlpipe[s3]')")
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        # no profile or credentials of the machine's user can leak in
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield S3Server(env["AWS_ENDPOINT_URL"], env)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()
