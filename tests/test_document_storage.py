"""Original documents in Supabase Storage (SUPABASE_URL + SUPABASE_SERVICE_KEY), through
the ``supabase`` package's Storage client, against a loopback server speaking its REST
API: uploaded, served, replaced, removed; an outage stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chat_server.auth import mint_token
from tests.http_api.support import TIMEOUT, create_game, expect_error
from tests.pdfs import text_pdf
from tests.server import RunningServer, make_settings, running_server
from tests.storage_server import FakeStorage

SERVICE_KEY = "service-role-key-for-the-tests"
BUCKET = "rulebooks"
PDF = text_pdf([["Setup", "Shuffle the tiles."], ["Scoring", "Roads score one point per tile."]])


@pytest.fixture
def storage() -> Iterator[FakeStorage]:
    with FakeStorage(SERVICE_KEY, buckets=(BUCKET,)) as fake:
        yield fake


@pytest.fixture
def server(tmp_path: Path, storage: FakeStorage) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path,
        supabase_url=storage.url,
        supabase_service_key=SERVICE_KEY,
        documents_bucket=BUCKET,
    )
    with running_server(settings) as srv:
        yield srv


def client(server: RunningServer, user: str, role: str) -> httpx.Client:
    """A client with a token issued as this Supabase project issues them (``iss``)."""
    settings = server.settings
    assert settings.supabase_jwt_secret
    token = mint_token(
        secret=settings.supabase_jwt_secret, user_id=user, role=role, issuer=settings.jwt_issuer
    )
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=TIMEOUT)


@pytest.fixture
def staff(server: RunningServer) -> Iterator[httpx.Client]:
    with client(server, "dev-1", "developer") as http:
        yield http


def post_pdf(staff: httpx.Client, path: str, data: bytes, method: str = "POST") -> httpx.Response:
    return staff.request(method, path, files={"file": ("rules.pdf", data, "application/pdf")})


def test_a_pdf_lives_in_the_bucket_and_is_served_from_it(
    server: RunningServer, staff: httpx.Client, storage: FakeStorage
) -> None:
    """The upload lands in DOCUMENTS_BUCKET as a PDF, and the file route serves it back."""
    game = create_game(staff, name="Carcassonne")
    doc = post_pdf(staff, f"/admin/games/{game['id']}/documents", PDF)
    assert doc.status_code == 201, doc.text
    assert [(bucket, o.data, o.content_type) for (bucket, _), o in storage.objects.items()] == [
        (BUCKET, PDF, "application/pdf")
    ]
    with client(server, "ann", "basic") as player:
        served = player.get(f"/games/{game['id']}/documents/{doc.json()['id']}/file")
    assert served.status_code == 200 and served.content == PDF
    assert served.headers["content-type"] == "application/pdf"
    assert storage.requests[-1][0] == "GET"


def test_a_compressed_download_is_served_whole(
    server: RunningServer, staff: httpx.Client, storage: FakeStorage
) -> None:
    """Storage (or a proxy before it) answering with gzip: the file route serves the
    PDF's own bytes, not a body longer than the length it announced."""
    game = create_game(staff, name="Azul")
    doc = post_pdf(staff, f"/admin/games/{game['id']}/documents", PDF)
    assert doc.status_code == 201, doc.text
    storage.gzip = True
    with client(server, "ann", "basic") as player:
        served = player.get(f"/games/{game['id']}/documents/{doc.json()['id']}/file")
    assert served.status_code == 200 and served.content == PDF


def test_replace_and_delete_remove_the_old_objects(
    staff: httpx.Client, storage: FakeStorage
) -> None:
    """A replaced file's object is removed once the new one is stored; delete removes it all."""
    game = create_game(staff, name="Carcassonne")
    path = f"/admin/games/{game['id']}/documents"
    doc = post_pdf(staff, path, PDF).json()
    new = text_pdf([["Scoring", "Roads score two points per tile."]])
    assert post_pdf(staff, f"{path}/{doc['id']}", new, method="PUT").status_code == 200
    assert [o.data for o in storage.objects.values()] == [new]
    assert staff.get(f"/games/{game['id']}/documents/{doc['id']}/file").content == new
    assert staff.delete(f"{path}/{doc['id']}").status_code == 204
    assert storage.objects == {}


def test_storage_down_is_503_and_stores_nothing(staff: httpx.Client, storage: FakeStorage) -> None:
    """With Storage failing, an upload is 503 UNAVAILABLE and no document is stored."""
    game = create_game(staff, name="Carcassonne")
    path = f"/admin/games/{game['id']}/documents"
    storage.fail_with = 503
    expect_error(post_pdf(staff, path, PDF), 503, "UNAVAILABLE")
    storage.fail_with = None
    assert staff.get(path).json() == {"documents": []}
    assert storage.objects == {}


def test_a_rejected_file_never_reaches_storage(staff: httpx.Client, storage: FakeStorage) -> None:
    """A file refused as unreadable is not uploaded anywhere."""
    game = create_game(staff, name="Carcassonne")
    response = post_pdf(staff, f"/admin/games/{game['id']}/documents", b"not a pdf at all")
    expect_error(response, 422, "DOCUMENT_TYPE_MISMATCH")
    assert storage.requests == []
