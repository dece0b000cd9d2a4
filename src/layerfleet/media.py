"""Files that users' printers produce (webcam pictures, feedback frames, videos), kept under
DATA_DIR/media and served only to members of the organization that owns them."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from layerfleet.api.deps import CurrentUser

router = APIRouter(include_in_schema=False)


def organization_prefix(organization_id: int) -> str:
    return f"orgs/{organization_id}/"


def media_root(data_dir: Path) -> Path:
    return data_dir / "media"


def media_url(base_url: str, relative_path: str | None) -> str | None:
    if not relative_path:
        return None
    return f"{base_url.rstrip('/')}/media/{relative_path}"


@router.get("/media/{path:path}")
async def serve_media(path: str, request: Request, user: CurrentUser) -> FileResponse:
    relative = PurePosixPath(path)
    own = path.startswith(organization_prefix(user.organization_id))
    if ".." in relative.parts or relative.is_absolute() or not own:
        raise HTTPException(404, detail="Not found.")
    root = media_root(request.app.state.settings.data_dir).resolve()
    file = (root / relative).resolve()
    if not file.is_relative_to(root) or not file.is_file():
        raise HTTPException(404, detail="Not found.")
    return FileResponse(file, headers={"Cache-Control": "private, max-age=60"})
