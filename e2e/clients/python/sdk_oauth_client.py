#!/usr/bin/env python3
"""Test driver: official MCP Python SDK (pip `mcp==2.3.0`) -> OAuth-protected Streamable HTTP server.

Protocol with the parent test (line-based):
  stdout  AUTHORIZE <authorization url>          (flushed; parent must drive the AS)
  stdin   CALLBACK <full redirect url incl. ?code=...&state=...>
  stdout  one JSON object per line for every result/event; last line {"event": "done", ...}
Exit code 0 on success, non-zero on any failure (traceback on stderr).

Note: mcp 2.x uses `httpx2` (not `httpx`), `streamable_http_client` (not `streamablehttp_client`),
and callback_handler must return `AuthorizationCodeResult` (not a (code, state) tuple).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import anyio
import anyio.to_thread
import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


class MemoryStorage(TokenStorage):
    """In-memory TokenStorage; records every set_tokens call so the test can see refreshes."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.token_history: list[OAuthToken] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.token_history.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Handlers:
    def __init__(self) -> None:
        self.authorize_calls = 0

    async def redirect_handler(self, authorization_url: str) -> None:
        self.authorize_calls += 1
        sys.stdout.write(f"AUTHORIZE {authorization_url}\n")
        sys.stdout.flush()

    async def callback_handler(self) -> AuthorizationCodeResult:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            raise OAuthFlowError("stdin closed before CALLBACK line")
        line = line.strip()
        if not line.startswith("CALLBACK "):
            raise OAuthFlowError(f"expected 'CALLBACK <url>', got {line!r}")
        query = parse_qs(urlparse(line[len("CALLBACK ") :].strip()).query)

        def one(key: str) -> str | None:
            vals = query.get(key)
            return vals[0] if vals else None

        if one("error"):
            raise OAuthFlowError(f"authorization error: {one('error')} {one('error_description') or ''}")
        code = one("code")
        if not code:
            raise OAuthFlowError("callback URL has no code")
        # `iss` (RFC 9207) is validated by the SDK if present / if the AS advertises it.
        return AuthorizationCodeResult(code=code, state=one("state"), iss=one("iss"))


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def run(args: argparse.Namespace) -> None:
    storage = MemoryStorage()
    handlers = Handlers()
    metadata = OAuthClientMetadata(
        client_name=args.client_name,
        redirect_uris=[args.redirect_uri],  # type: ignore[list-item]  (pydantic coerces str -> AnyUrl)
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
        # no `scope`: the SDK overwrites client_metadata.scope on every 401 (oauth2.py:736) with
        # WWW-Authenticate scope > PRM scopes_supported > AS scopes_supported (+offline_access if AS lists it)
    )
    provider = OAuthClientProvider(
        server_url=args.url,
        client_metadata=metadata,
        storage=storage,
        redirect_handler=handlers.redirect_handler,
        callback_handler=handlers.callback_handler,
    )

    async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        transport = streamable_http_client(args.url, http_client=http)
        async with Client(transport, mode=args.mode, cache=None) as client:
            emit({"event": "initialized", "protocol_version": client.protocol_version,
                  "server_info": dump(client.server_info) if client.server_info else None})

            tools = await client.list_tools()
            emit({"event": "tools/list", "tools": [t.name for t in tools.tools]})

            result = await client.call_tool(args.tool, {})
            emit({"event": "tools/call", "n": 1, "result": dump(result)})
            if result.is_error:
                raise SystemExit("first tool call returned isError=true")

            before = provider.context.current_tokens
            assert before is not None and before.refresh_token, "server issued no refresh_token"
            n_sets_before = len(storage.token_history)

            # Force a refresh without sleeping: OAuthContext.is_token_valid() compares
            # time.time() <= token_expiry_time (must be truthy: 0/None mean 'never expires').
            provider.context.token_expiry_time = time.time() - 1

            result2 = await client.call_tool(args.tool, {})
            emit({"event": "tools/call", "n": 2, "result": dump(result2)})
            if result2.is_error:
                raise SystemExit("second tool call returned isError=true")

            after = provider.context.current_tokens
            assert after is not None
            refreshed = {
                "event": "refresh",
                "token_sets_before": n_sets_before,
                "token_sets_after": len(storage.token_history),
                "access_token_changed": after.access_token != before.access_token,
                "refresh_token_changed": after.refresh_token != before.refresh_token,
                "old_refresh_token_tail": before.refresh_token[-6:],
                "new_refresh_token_tail": (after.refresh_token or "")[-6:],
                "authorize_calls": handlers.authorize_calls,  # stays 1 if it was a refresh, not a re-login
            }
            emit(refreshed)
            if not (refreshed["access_token_changed"] and handlers.authorize_calls == 1
                    and refreshed["token_sets_after"] == n_sets_before + 1):
                raise SystemExit("refresh was not observed")
    emit({"event": "done", "ok": True})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="MCP endpoint, e.g. http://127.0.0.1:PORT/mcp")
    p.add_argument("--redirect-uri", default="http://127.0.0.1:53682/callback",
                   help="redirect_uri to register (nothing listens; the parent handles the redirect)")
    p.add_argument("--tool", default="ibkr_health")
    p.add_argument("--client-name", default="py-sdk-test-driver")
    p.add_argument("--mode", default="legacy", choices=["legacy", "auto"],
                   help="legacy = plain initialize handshake; auto probes server/discover (2026-07-28) first")
    args = p.parse_args()
    anyio.run(run, args)


if __name__ == "__main__":
    main()
