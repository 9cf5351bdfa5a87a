from __future__ import annotations

from zt_harness import Gateway


def test_login_flow(gw: Gateway) -> None:
    secret = gw.add_user("alice", totp=True)
    with gw.client() as c:
        r = c.get(gw.url("echo", "/x?y=1"), headers={"Accept": "text/html"})
        assert r.status_code == 303 or r.status_code == 302, (r.status_code, r.text, gw.log_text())
        print(r.headers)
