"""The OpenID provider of the sign-in tests: the npm package `oidc-provider` (OpenID Certified),
run by node from tests/support/oidc (installed there by `scripts/setup test` from its lock) on a
free loopback port, with KubeKVM's client registered; stopped on every exit path.

`tests/support/oidc/provider.mjs` says what it serves, and its one test hook: a token endpoint
made to misbehave (`OidcProvider.misbehave`), re-signing the ID token with its own key after
changing one claim, so a test can show KubeKVM refusing a wrong audience or an expired token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.processes import ROOT, Child, free_port
from tests.support.waiting import wait_until

HERE = ROOT / "tests" / "support" / "oidc"
CLIENT_ID = "kubekvm"
CLIENT_SECRET = "kubekvm-client-secret"  # a test provider's


@dataclass
class OidcProvider:
    issuer: str
    process: subprocess.Popen[bytes]
    log: Path

    def misbehave(self, mode: str = "") -> None:
        """Make the token endpoint send a wrong ID token from now on ("wrong-audience",
        "expired"), or behave again ("")."""
        answer = httpx.get(f"{self.issuer}/__test/misbehave", params={"mode": mode}, timeout=10)
        assert answer.json() == {"mode": mode}, answer.text

    def settings(self, name: str, **overrides: str) -> dict[str, str]:
        """The KUBEKVM_OIDC_* environment of a server using this provider as `name`."""
        prefix = f"KUBEKVM_OIDC_{name.upper()}"
        return {"KUBEKVM_OIDC_PROVIDERS": name, f"{prefix}_ISSUER": self.issuer, f"{prefix}_CLIENT_ID": CLIENT_ID,
                f"{prefix}_CLIENT_SECRET": CLIENT_SECRET, f"{prefix}_TITLE": "Campus",
                f"{prefix}_SCOPES": "openid profile groups", f"{prefix}_ROLES": "staff=teacher;students=student",
                f"{prefix}_DEFAULT_ROLE": "none", "KUBEKVM_OIDC_TIMEOUT": "10", **overrides}

    def stop(self) -> None:
        Child(self.process, self.log).stop()


def start_provider(*, kubekvm_url: str, name: str, accounts: dict[str, list[str]], log: Path,
                   timeout: float = 60.0) -> OidcProvider:
    node = shutil.which("node")
    assert node, "no node: scripts/setup test installs it"
    assert (HERE / "node_modules" / "oidc-provider").is_dir(), "no oidc-provider: run scripts/setup test"
    port = free_port()
    config = {"port": port, "accounts": {user: {"groups": groups} for user, groups in accounts.items()},
              "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                           "redirect_uris": [f"{kubekvm_url}/login/oidc/{name}/callback"],
                           "post_logout_redirect_uris": [f"{kubekvm_url}/login"],
                           "grant_types": ["authorization_code"], "response_types": ["code"]}]}
    process = subprocess.Popen([node, str(HERE / "provider.mjs")], cwd=HERE, stdin=subprocess.DEVNULL,
                               stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               env={**os.environ, "OIDC_TEST_CONFIG": json.dumps(config)})
    provider = OidcProvider(issuer=f"http://127.0.0.1:{port}", process=process, log=log)

    def discovered() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"oidc-provider exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(discovered, timeout=timeout, what="oidc-provider's discovery document")
    except BaseException:
        provider.stop()
        raise
    return provider
