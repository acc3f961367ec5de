"""A throwaway PostgreSQL cluster for the store tests, started from Debian's server binaries.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to ``nobody`` (its
directory is a fresh ``mkdtemp`` under /tmp, handed to that user) and every server process runs as that
user; elsewhere it runs as the current user. It listens on a free 127.0.0.1 port only (no Unix socket
outside its directory), trusts local connections (a test cluster), and is stopped (fast shutdown, then
SIGKILL) and deleted at the end.

```python
pg = PostgresServer.start()
url = pg.new_database()        # postgresql://edgebench@127.0.0.1:PORT/t_xxxxxxxx, empty
pg.stop()
```
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from sshfarm import free_port

SUPERUSER = "edgebench"
START_TIMEOUT_S = 30.0


def server_bin() -> str | None:
    """The newest installed PostgreSQL server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def available() -> bool:
    if server_bin() is None:
        return False
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class PostgresServer:
    root: str
    port: int
    proc: subprocess.Popen
    user: str | None

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql (.ci/setup installs it)")
        root = tempfile.mkdtemp(prefix="edgebench-pg-")
        user = "nobody" if os.geteuid() == 0 else None
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        data = os.path.join(root, "data")
        run_as = {"user": user} if user else {}
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-U", SUPERUSER, "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=root, env=env,
                       timeout=120, **run_as)
        port = free_port()
        log = open(os.path.join(root, "server.log"), "wb")
        proc = subprocess.Popen(
            [os.path.join(bindir, "postgres"), "-D", data, "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             "-c", "fsync=off", "-c", "max_connections=100"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True, **run_as)
        server = cls(root, port, proc, user)
        server._wait_ready()
        return server

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres refused connections for {START_TIMEOUT_S:.0f} s") from exc
                time.sleep(0.2)

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.root, "server.log"), encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)
