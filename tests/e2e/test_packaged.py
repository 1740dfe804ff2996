"""Images that need the closure: /bin/sh through the symlinks option, and a Debian-packaged
server (lighttpd) built with ``packages``, serving a page shipped with ``contents``."""

from __future__ import annotations

import os
import urllib.request

import pytest

from conftest import require, unsquashfs_list
from e2e.lib import attached, build_image, port_closed, unit

pytestmark = pytest.mark.e2e
HTTP_PORT = 18151


def shell_spec() -> dict:
    return {
        "pname": "shell", "version": "1",
        "units": [unit("shell.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                       "ExecStart=/bin/sh -c 'echo \"sh says $((6 * 7)) as $0\"'\n")],
        "symlinks": [{"symlink": "/bin/sh", "object": "/usr/bin/dash"}],
    }


def test_symlinked_bin_sh_runs_the_service(container, tmp_path):
    c = container
    require(os.path.exists("/usr/bin/dash"), "dash is not installed")
    image = build_image(tmp_path, shell_spec())
    # the option's link is absolute (the host's own /usr/bin/sh -> dash is relative);
    # on a merged-/usr host it lands below the kept /bin -> usr/bin link
    links = {path: target for path, (mode, _, target) in unsquashfs_list(image).items()
             if mode.startswith("l")}
    assert "/usr/bin/dash" in {links.get("/bin/sh"), links.get("/usr/bin/sh")}, links
    with attached(c, image):
        start = c.start("shell.service")
        journal = c.journal("shell.service")
    assert start.ok, journal
    assert "sh says 42 as /bin/sh" in journal


@pytest.fixture(scope="module")
def lighttpd_image(tmp_path_factory):
    require(os.path.exists("/usr/sbin/lighttpd"),
            "lighttpd is not installed on the build host (apt-get install lighttpd)")
    src = tmp_path_factory.mktemp("www")
    (src / "index.html").write_text("<h1>served by a portable lighttpd</h1>\n")
    conf = src / "www.conf"
    conf.write_text(
        'server.document-root = "/srv/www"\n'
        f'server.bind = "127.0.0.1"\nserver.port = {HTTP_PORT}\n'
        'server.modules = ()\nindex-file.names = ("index.html")\n'
        'mimetype.assign = (".html" => "text/html")\n')
    return build_image(src / "out", {
        "pname": "www", "version": "1.0", "packages": ["lighttpd"],
        "units": [unit("www.service", "[Service]\nExecStart=/usr/sbin/lighttpd -D -f "
                       "/etc/lighttpd/www.conf\n")],
        "contents": [{"source": str(conf), "target": "/etc/lighttpd/www.conf"},
                     {"source": str(src / "index.html"), "target": "/srv/www/index.html"}],
    })


def test_debian_packaged_lighttpd_serves_a_page(container, lighttpd_image):
    c = container
    with attached(c, lighttpd_image):
        start = c.start("www.service")
        assert start.ok, c.journal("www.service")
        assert c.wait_for("www.service").active == "active", c.journal("www.service")
        body = ""
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/", timeout=2) as r:
                    body = r.read().decode()
                    assert r.headers["Content-Type"] == "text/html"
                break
            except OSError:
                c.run("sleep", "0.1")
        assert body == "<h1>served by a portable lighttpd</h1>\n", c.journal("www.service")
        # it runs as the profile's dynamic user, not as root
        pid = c.systemctl("show", "-p", "MainPID", "--value", "www.service").stdout.strip()
        status = c.read_file(f"/proc/{pid}/status")
        uid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:"))
        assert uid != "0"
    assert port_closed(HTTP_PORT)
