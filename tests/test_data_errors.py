"""Bad input gives one-line DataErrors that name the file, the line or column, the value and the rule."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from mf.data import load_movielens
from mf.errors import DataError, MFError
from tests.files import write_file

HEADER = "userId,movieId,rating,timestamp\n"


def _error(source: Path | str) -> str:
    with pytest.raises(DataError) as info:
        load_movielens(source)
    message = str(info.value)
    # Every message is one line, meant to be printed as is.
    assert "\n" not in message
    return message


def test_data_error_is_an_mf_error() -> None:
    # The CLI catches MFError to print messages without a traceback.
    assert issubclass(DataError, MFError)


def test_load_movielens_rejects_wrong_header(tmp_path: Path) -> None:
    path = write_file(tmp_path / "ratings.csv", "user,movieId,rating,timestamp\n1,1,4.0,5\n")
    message = _error(path)
    # Names the file, line 1, the header found and the missing column.
    assert str(path) in message and "line 1" in message
    assert "'user,movieId,rating,timestamp'" in message and "'userId'" in message


def test_load_movielens_rejects_missing_column(tmp_path: Path) -> None:
    path = write_file(tmp_path / "ratings.csv", "userId,movieId,timestamp\n1,1,5\n")
    message = _error(path)
    # The absent rating column is named.
    assert str(path) in message and "line 1" in message and "'rating'" in message


@pytest.mark.parametrize(
    ("body", "line", "column", "found"),
    [
        ("1,1,4.0,5\nab,2,4.0,6\n", 3, "userId", "'ab'"),
        ("1,1,4.0,5\n1,x1,4.0,6\n", 3, "movieId", "'x1'"),
        ("1,1,4.0,5\n1,2,4.0,noon\n", 3, "timestamp", "'noon'"),
        ("1,1,four,5\n", 2, "rating", "'four'"),
        ("1,1,4.0,5\n1,2,,6\n", 3, "rating", "an empty value"),
        ("1,1,4.0,5\n1,2,NaN,6\n", 3, "rating", "'NaN'"),
        ("1,1,4.0,5\n1,2,5.5,6\n", 3, "rating", "'5.5'"),
        ("1,1,0.0,5\n", 2, "rating", "'0.0'"),
        ("1,1,4.0,5\n1,2,3.25,6\n", 3, "rating", "'3.25'"),
    ],
)
def test_load_movielens_names_line_column_and_value_in_csv(
    tmp_path: Path, body: str, line: int, column: str, found: str
) -> None:
    path = write_file(tmp_path / "ratings.csv", HEADER + body)
    message = _error(path)
    # File, 1-based line (header is line 1), column and the value found are all named.
    assert str(path) in message
    assert f"line {line}," in message and f"column {column!r}" in message and found in message
    assert "expected" in message


def test_load_movielens_counts_blank_lines_in_line_numbers(tmp_path: Path) -> None:
    path = write_file(tmp_path / "ratings.csv", HEADER + "1,1,4.0,5\n\n\n1,2,9,6\n")
    # Blank lines are skipped but still counted, so the number matches an editor's.
    assert "line 5," in _error(path)


@pytest.mark.parametrize("body", ["1,1,4.0\n", "1,1,4.0,5,7\n"])
def test_load_movielens_rejects_wrong_field_count(tmp_path: Path, body: str) -> None:
    path = write_file(tmp_path / "ratings.csv", HEADER + "2,2,3.0,1\n" + body)
    message = _error(path)
    # The line with too few or too many fields is named, with its content.
    assert str(path) in message and "line 3:" in message and repr(body.strip()) in message


def test_load_movielens_rejects_half_stars_in_ml_100k(tmp_path: Path) -> None:
    path = write_file(tmp_path / "ml-100k" / "u.data", "1\t1\t4\t5\n1\t2\t3.5\t6\n")
    message = _error(path.parent)
    # ml-100k ratings are integers 1..5.
    assert (
        str(path) in message and "line 2," in message and "'3.5'" in message and "integer rating" in message
    )


def test_load_movielens_rejects_half_stars_in_ml_1m(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    write_file(folder / "users.dat", "1::F::1::10::48067\n")
    path = write_file(folder / "ratings.dat", "1::1::4::5\n1::2::4.5::6\n")
    message = _error(folder)
    # A ratings.dat beside users.dat is ml-1m: whole stars only.
    assert str(path) in message and "line 2," in message and "'4.5'" in message


def test_load_movielens_rejects_out_of_scale_in_ml_10m_zip(tmp_path: Path) -> None:
    archive = tmp_path / "ml-10m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-10M100K/ratings.dat", "1::1::4.5::5\n1::2::0::6\n")
    message = _error(archive)
    # Inside a zip the message names archive and member; ml-10m allows 0.5..5, not 0.
    assert f"{archive}/ml-10M100K/ratings.dat" in message and "line 2," in message and "'0'" in message


def test_load_movielens_rejects_bad_dat_separator(tmp_path: Path) -> None:
    path = write_file(tmp_path / "ratings.dat", "1::1::4::5\n1:2::4::6\n")
    message = _error(path)
    # A single ':' leaves three fields on line 2.
    assert str(path) in message and "line 2:" in message and "'1:2::4::6'" in message


def test_load_movielens_rejects_non_numeric_u_data(tmp_path: Path) -> None:
    path = write_file(tmp_path / "u.data", "1\t1\t4\t5\n1\tGoldenEye\t4\t6\n")
    message = _error(path)
    assert str(path) in message and "line 2," in message and "'GoldenEye'" in message


@pytest.mark.parametrize("name", ["ratings.csv", "u.data", "ratings.dat", "export.csv"])
def test_load_movielens_rejects_zero_byte_file(tmp_path: Path, name: str) -> None:
    path = write_file(tmp_path / name, "")
    message = _error(path)
    # An empty file is named as such.
    assert str(path) in message and "empty" in message


def test_load_movielens_rejects_header_only_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "ratings.csv", HEADER)
    message = _error(path)
    assert str(path) in message and "no ratings" in message


def test_load_movielens_rejects_folder_without_ratings(tmp_path: Path) -> None:
    write_file(tmp_path / "set" / "movies.csv", "movieId,title,genres\n")
    message = _error(tmp_path / "set")
    # The folder is named, with the files that were looked for.
    assert str(tmp_path / "set") in message and "ratings.csv" in message and "u.data" in message


def test_load_movielens_rejects_zip_without_ratings(tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("other/readme.txt", "hello")
    message = _error(archive)
    assert str(archive) in message and "no MovieLens ratings file" in message


def test_load_movielens_rejects_corrupt_zip(tmp_path: Path) -> None:
    path = write_file(tmp_path / "ml-latest-small.zip", b"PK not really")
    assert str(path) in _error(path)


def test_load_movielens_rejects_unknown_layout(tmp_path: Path) -> None:
    path = write_file(tmp_path / "notes.txt", "just some words\n")
    message = _error(path)
    # Line 1 matches none of the layouts; the line and its content are named.
    assert str(path) in message and "line 1" in message and "'just some words'" in message


def test_load_movielens_rejects_csv_without_header(tmp_path: Path) -> None:
    path = write_file(tmp_path / "export.csv", "1,1,4.0,5\n")
    message = _error(path)
    # A CSV needs the header; its first line is shown.
    assert str(path) in message and "line 1" in message and "'1,1,4.0,5'" in message


def test_load_movielens_rejects_missing_path() -> None:
    message = _error("/nonexistent/ratings.csv")
    # The path is named, and the set names are offered.
    assert "/nonexistent/ratings.csv" in message and "ml-latest-small" in message


def test_load_movielens_rejects_bad_movies_dat(tmp_path: Path) -> None:
    write_file(tmp_path / "ratings.dat", "1::1::4::5\n")
    path = write_file(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation\nbroken line\n")
    message = _error(tmp_path)
    # Titles files are checked too.
    assert str(path) in message and "line 2" in message and "'broken line'" in message
