"""Property-based: every operation of our /openapi.json and of the seed's Eiger spec, with each of
its text, number and date inputs (query parameters and JSON body fields) set to what a careless
or hostile client sends — NUL and other control characters, unpaired surrogates, escapes,
numbers and dates at and past their extremes — never answers 5xx, and refuses in the dialect's
own format. Runs against a real server on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import yaml
from hypothesis import HealthCheck
from hypothesis import strategies as st

from test_eiger_conformance import SPEC
from test_eiger_conformance import seeded as eiger_seeded  # noqa: F401  (a fixture)
from test_openapi_conformance import seeded as v1_seeded  # noqa: F401  (a fixture)

HOSTILE_TEXT = st.one_of(
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy", "\x1b[2J", "\r\nX-Injected: 1", "%00", "\\u0000",
                     "' OR 1=1 --", "../../etc/passwd", "\u202e", "\ufeff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "", " ", "a" * 5000]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=30),
)
EXTREME_NUMBERS = st.sampled_from([0, -1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 10**40, 1e308, -1e308, 0.5,
                                   "NaN", "Infinity", "1e999", "", "0x10", True, None, [], {}])
EXTREME_DATES = st.sampled_from(["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "0000-00-00T00:00:00Z",
                                 "2026-13-45T25:61:61Z", "1970-01-01", "+275760-09-13T00:00:00Z", "2026",
                                 "9999-12-31T23:59:59.999999Z", "", "now", 2026, -1e20])


def _kind(schema: dict[str, Any]) -> str | None:
    for option in [schema, *schema.get("anyOf", []), *schema.get("oneOf", []), *schema.get("allOf", [])]:
        if option.get("format") == "date-time":
            return "date"
        if option.get("type") in ("integer", "number"):
            return "number"
        if option.get("type") == "string":
            return "text"
    return None


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _inputs(spec: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(method, path, where, name, kind) for every text, number or date input of the spec."""
    inputs = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete") or not isinstance(operation, dict):
                continue
            for parameter in [*item.get("parameters", []), *operation.get("parameters", [])]:
                parameter = _resolve(spec, parameter)
                kind = _kind(_resolve(spec, parameter.get("schema", {})))
                if parameter.get("in") == "query" and kind:
                    inputs.append((method.upper(), path, "query", parameter["name"], kind))
            content = _resolve(spec, operation.get("requestBody", {})).get("content", {})
            body = _resolve(spec, content.get("application/json", {}).get("schema", {}))
            for name, field in body.get("properties", {}).items():
                kind = _kind(_resolve(spec, field))
                if kind:
                    inputs.append((method.upper(), path, "body", name, kind))
    return inputs


def _hostile(kind: str) -> st.SearchStrategy[Any]:
    return {"text": st.one_of(HOSTILE_TEXT, EXTREME_NUMBERS), "number": st.one_of(EXTREME_NUMBERS, HOSTILE_TEXT),
            "date": st.one_of(EXTREME_DATES, HOSTILE_TEXT)}[kind]


def _send(client: httpx.Client, method: str, path: str, where: str, name: str, value: Any,
          ids: dict[str, Any]) -> httpx.Response:
    url = re.sub(r"\{(\w+)\}", lambda m: str(ids.get(m.group(1), "1")), path)
    if where == "query":
        text = value if isinstance(value, str) else str(value)
        # Percent-encoded byte by byte, as a client may: a lone surrogate arrives as bytes that
        # are not UTF-8.
        raw = quote(text.encode("utf-8", "surrogatepass"), safe="")
        return client.request(method, f"{url}?{quote(name, safe='')}={raw}")
    body = f'{{"{name}": {_json(value)}}}'
    return client.request(method, url, content=body.encode("utf-8", "surrogatepass"),
                          headers={"Content-Type": "application/json"})


def _json(value: Any) -> str:
    import json

    if isinstance(value, str):
        return json.dumps(value)  # escapes NUL and surrogates as \\u0000, \\ud800: valid JSON text
    if value in ("NaN", "Infinity"):
        return value  # not JSON: the server must say so
    return json.dumps(value)


def _check_all(base_url: str, spec: dict[str, Any], headers: dict[str, str], ids: dict[str, Any],
               error_shape: Any, examples: int) -> dict[tuple[str, str], set[int]]:
    inputs = _inputs(spec)
    assert inputs
    seen: dict[tuple[str, str], set[int]] = {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        @hypothesis.given(data=st.data())
        def check(data: st.DataObject) -> None:
            method, path, where, name, kind = data.draw(st.sampled_from(inputs))
            # DELETEs would remove the seeded objects the other requests should meet.
            hypothesis.assume(method != "DELETE")
            value = data.draw(_hostile(kind))
            response = _send(client, method, path, where, name, value, ids)
            seen.setdefault((method, path), set()).add(response.status_code)
            assert response.status_code < 500, (method, path, where, name, value, response.text)
            if 400 <= response.status_code < 500:
                error_shape(response)

        check()
    return seen


def _eiger_error(response: httpx.Response) -> None:
    assert set(response.json()) == {"message"}, response.text
    assert response.headers["X-Reference-ID"].isdigit()


def _drf_error(response: httpx.Response) -> None:
    body = response.json()
    assert isinstance(body, dict) and body, response.text
    assert "detail" in body or all(isinstance(v, list) for v in body.values()), response.text


def test_hostile_values_in_every_eiger_input(live_url: str, eiger_seeded: dict[str, Any]) -> None:  # noqa: F811
    spec = yaml.safe_load(Path(SPEC).read_text())
    seen = _check_all(f"{live_url}/api/v3", spec, eiger_seeded["headers"], eiger_seeded["ids"], _eiger_error, 400)
    assert len(seen) >= 8  # the draws spread over the operations, not one


def test_hostile_values_in_every_input_of_our_openapi(live_url: str, v1_seeded: dict[str, Any]) -> None:  # noqa: F811
    spec = httpx.get(f"{live_url}/openapi.json").json()
    ids = {"printer_id": v1_seeded["printer_id"], "print_id": v1_seeded["print_id"]}

    def shape(response: httpx.Response) -> None:
        if response.request.url.path.startswith("/api/v3"):
            _eiger_error(response)
        else:
            _drf_error(response)

    seen = _check_all(live_url, spec, v1_seeded["headers"], ids, shape, 300)
    assert len(seen) >= 5
