"""JSON errors everywhere on the API: never an HTML error page."""

from __future__ import annotations

import httpx

from conftest import Farm
from layerfleet.app import create_app


async def test_unknown_api_path_is_json_404(client, farm: Farm) -> None:
    owner = await farm.member()
    response = await client.get("/api/v1/nothing-here/", headers=owner.headers)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": "Not found."}


async def test_wrong_method_is_json_405(client, farm: Farm) -> None:
    owner = await farm.member()
    response = await client.put("/api/v1/printers/", headers=owner.headers)
    assert response.status_code == 405
    assert response.json() == {"detail": 'Method "PUT" not allowed.'}


async def test_unexpected_failure_is_json_500_with_a_reference(settings) -> None:
    app = create_app(settings)

    @app.get("/api/v1/boom/")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/api/v1/boom/")
    await app.state.services.engine.dispose()
    assert response.status_code == 500
    body = response.json()
    assert "kaboom" not in body["detail"]
    assert response.headers["x-reference-id"] in body["detail"]


async def test_openapi_documents_400_not_422(client) -> None:
    schema = (await client.get("/openapi.json")).json()
    patch = schema["paths"]["/api/v1/printers/{printer_id}/"]["patch"]["responses"]
    assert "400" in patch and "422" not in patch and "404" in patch
    assert "/api/v1/prints/{print_id}/prediction_json" in schema["paths"]
