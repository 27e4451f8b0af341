"""load_movielens on every MovieLens layout: the real sets, and small generated look-alikes.

ml-latest-small is the package's own copy (folder and zip); ml-100k is read from ../shared beside
the checkout, and its tests are skipped where that is absent."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from mf.data import Ratings, load_movielens
from mf.data.download import BUNDLED
from tests.files import ml_latest_small, write_file

SMALL_DIR = ml_latest_small()
SMALL_ZIP = Path(str(BUNDLED["ml-latest-small"]))
ML100K_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
needs_ml_100k = pytest.mark.skipif(not ML100K_DIR.is_dir(), reason=f"{ML100K_DIR} is not beside the checkout")

# Three users, including a tie in timestamps, in a deliberately unsorted file order.
ROWS = [(3, 10, 4.0, 300), (1, 20, 3.5, 100), (1, 10, 5.0, 100), (2, 30, 0.5, 200)]


def _csv(rows: list[tuple[int, int, float, int]]) -> str:
    return "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r:g},{t}\n" for u, i, r, t in rows)


def _dat(rows: list[tuple[int, int, float, int]]) -> str:
    return "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in rows)


def _assert_rows(ratings: Ratings, rows: list[tuple[int, int, float, int]]) -> None:
    frame = ratings.frame
    # The frame keeps the file's order and the documented column names and dtypes.
    assert list(frame.columns) == ["user", "item", "rating", "timestamp"]
    assert [str(t) for t in frame.dtypes] == ["int64", "int64", "float32", "int64"]
    assert list(frame.itertuples(index=False, name=None)) == rows


def test_load_movielens_reads_real_ml_latest_small_folder() -> None:
    ratings = load_movielens(SMALL_DIR)
    frame = ratings.frame
    # The published counts of ml-latest-small, with titles from movies.csv.
    assert len(frame) == 100_836
    assert frame["user"].nunique() == 610
    assert frame["item"].nunique() == 9_724
    assert ratings.titles is not None and ratings.titles[1] == "Toy Story (1995)"
    # Half-star ratings from 0.5 to 5, first row as in the file.
    assert frame["rating"].min() == 0.5 and frame["rating"].max() == 5.0
    assert tuple(frame.iloc[0]) == (1, 1, 4.0, 964982703)
    assert ratings.source == str(SMALL_DIR)


def test_load_movielens_reads_real_ml_latest_small_zip() -> None:
    from_zip = load_movielens(SMALL_ZIP)
    from_dir = load_movielens(SMALL_DIR)
    # A GroupLens zip (files under one top folder) reads exactly like its unpacked folder.
    assert from_zip.frame.equals(from_dir.frame)
    assert from_zip.titles == from_dir.titles


@needs_ml_100k
def test_load_movielens_reads_real_ml_100k_folder() -> None:
    ratings = load_movielens(ML100K_DIR)
    frame = ratings.frame
    # The published counts of ml-100k; u.data has whole stars 1..5.
    assert len(frame) == 100_000
    assert frame["user"].nunique() == 943
    assert frame["item"].nunique() == 1_682
    assert set(np.unique(frame["rating"])) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # Titles come from u.item (latin-1, '|'-separated).
    assert ratings.titles is not None and len(ratings.titles) == 1_682
    assert ratings.titles[1] == "Toy Story (1995)"


@needs_ml_100k
def test_load_movielens_reads_u_data_file_itself() -> None:
    ratings = load_movielens(ML100K_DIR / "u.data")
    # The file alone gives the same ratings, and titles from the u.item beside it.
    assert len(ratings.frame) == 100_000
    assert ratings.titles is not None and ratings.titles[2] == "GoldenEye (1995)"


def test_load_movielens_reads_ml_25m_style_folder(tmp_path: Path) -> None:
    write_file(tmp_path / "ml-25m" / "ratings.csv", _csv(ROWS))
    write_file(
        tmp_path / "ml-25m" / "movies.csv",
        'movieId,title,genres\n10,"Lion, The (1994)",Drama\n20,B (2000),X\n',
    )
    ratings = load_movielens(tmp_path / "ml-25m")
    _assert_rows(ratings, ROWS)
    # Quoted titles with commas survive.
    assert ratings.titles == {10: "Lion, The (1994)", 20: "B (2000)"}


def test_load_movielens_finds_files_under_one_top_folder(tmp_path: Path) -> None:
    write_file(tmp_path / "outer" / "ml-25m" / "ratings.csv", _csv(ROWS))
    # A folder holding the set one level down is read like the set's own folder.
    _assert_rows(load_movielens(tmp_path / "outer"), ROWS)


def test_load_movielens_reads_plain_csv_file_without_titles(tmp_path: Path) -> None:
    path = write_file(tmp_path / "my_ratings.csv", _csv(ROWS))
    ratings = load_movielens(path)
    _assert_rows(ratings, ROWS)
    # No movies.csv beside it: no titles.
    assert ratings.titles is None


def test_load_movielens_reads_ml_1m_style_dat_with_latin1_titles(tmp_path: Path) -> None:
    rows = [(1, 10, 5.0, 978300760), (1, 20, 3.0, 978302109), (2, 10, 1.0, 978301968)]
    folder = tmp_path / "ml-1m"
    write_file(folder / "ratings.dat", _dat(rows))
    write_file(folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    write_file(
        folder / "movies.dat",
        "10::Ladri di biciclette (1948)::Drama\n20::Caf\xe9 au lait (1993)::Comedy\n".encode("latin-1"),
    )
    ratings = load_movielens(folder)
    _assert_rows(ratings, rows)
    # ml-1m's movies.dat is latin-1.
    assert ratings.titles == {10: "Ladri di biciclette (1948)", 20: "Café au lait (1993)"}


def test_load_movielens_reads_ml_10m_style_zip_with_half_stars(tmp_path: Path) -> None:
    rows = [(1, 122, 5.0, 838985046), (1, 185, 4.5, 838983525), (2, 122, 0.5, 838983421)]
    archive = tmp_path / "ml-10m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-10M100K/ratings.dat", _dat(rows))
        zf.writestr("ml-10M100K/movies.dat", "122::Boomerang (1992)::Comedy\n185::Net, The (1995)::Action\n")
        zf.writestr("ml-10M100K/tags.dat", "")
    ratings = load_movielens(archive)
    # Without users.dat a ratings.dat is ml-10m, whose half stars are valid.
    _assert_rows(ratings, rows)
    assert ratings.titles == {122: "Boomerang (1992)", 185: "Net, The (1995)"}


def test_load_movielens_reads_ratings_dat_file_itself(tmp_path: Path) -> None:
    rows = [(7, 1, 2.0, 5), (7, 2, 3.0, 6)]
    path = write_file(tmp_path / "ratings.dat", _dat(rows))
    _assert_rows(load_movielens(path), rows)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("export.txt", _csv(ROWS)),
        ("export.tsv", "".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in ROWS if r == int(r))),
        ("export.data", _dat(ROWS)),
    ],
)
def test_load_movielens_detects_layout_of_unknown_file_names(tmp_path: Path, name: str, text: str) -> None:
    ratings = load_movielens(write_file(tmp_path / name, text))
    # The layout is sniffed from line 1 when the file name does not say it.
    assert len(ratings.frame) == text.count("\n") - (1 if text.startswith("userId") else 0)


def test_load_movielens_skips_blank_lines_and_crlf(tmp_path: Path) -> None:
    text = _csv(ROWS).replace("\n", "\r\n") + "\r\n"
    # Windows line ends and a trailing blank line are harmless.
    _assert_rows(load_movielens(write_file(tmp_path / "ratings.csv", text)), ROWS)


def test_load_movielens_prefers_existing_path_over_set_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_file(tmp_path / "ml-100k" / "ratings.csv", _csv(ROWS))
    monkeypatch.chdir(tmp_path)
    # A path that exists is read as a path, never fetched as the set of the same name.
    _assert_rows(load_movielens("ml-100k"), ROWS)
