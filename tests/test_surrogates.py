"""Keyed surrogates: deterministic per patient, different across patients and keys, shape-preserving."""
from __future__ import annotations

import datetime as dt
import re

import pytest

from finetune.date_formats import find_dates
from finetune.phi_gazetteers import load_gazetteers
from finetune.phi_types import PhiType
from finetune.surrogates import Surrogates

KEY = b"test-key-0123456789abcdef-not-secret"


@pytest.fixture(scope="module")
def sur() -> Surrogates:
    return Surrogates(KEY)


def test_same_input_same_surrogate_across_instances(sur: Surrogates) -> None:
    other = Surrogates(KEY)
    for label, text in [(PhiType.NAME, "Hans Müller"), (PhiType.ID, "2021-004512"), (PhiType.PHONE, "0171 2345678"),
                        (PhiType.LOCATION, "Flensburg"), (PhiType.DATE, "03.02.2021")]:
        assert sur.replace("P1", label, text, "de") == other.replace("P1", label, text, "de")


def test_different_patients_and_keys_get_different_surrogates(sur: Surrogates) -> None:
    names = ["Miller", "Nicholson", "Marder", "Albers", "Schulze", "Becker"]
    p1 = [sur.name("P1", n, "en") for n in names]
    p2 = [sur.name("P2", n, "en") for n in names]
    other_key = [Surrogates(b"another-key-0123456789abcdef").name("P1", n, "en") for n in names]
    assert sum(a != b for a, b in zip(p1, p2)) >= 5
    assert sum(a != b for a, b in zip(p1, other_key)) >= 5
    assert all(a.lower() != n.lower() for a, n in zip(p1, names))


def test_names_map_word_by_word_and_keep_case_possessive_and_particles(sur: Surrogates) -> None:
    full = sur.name("P1", "Hans Müller", "de").split()
    alone = sur.name("P1", "Müller", "de")
    assert full[1] == alone  # "Hans Müller" and "Herr Müller" stay one person
    assert sur.name("P1", "MÜLLER", "de") == alone.upper()
    assert sur.name("P1", "müller", "de") == alone.lower()
    assert sur.name("P1", "Müller's", "de") == alone + "'s"
    assert sur.name("P1", "Jürgen W. von Wetterstein", "de").split()[2] == "von"
    assert re.fullmatch(r"[A-Z]\.", sur.name("P1", "W.", "de"))


def test_first_names_keep_gender(sur: Surrogates) -> None:
    gaz = load_gazetteers()
    for female in ["Gisela", "Emily", "Maria", "Katharina"]:
        new = sur.name("P7", female, "en")
        assert gaz.gender(new) in ("f", None), (female, new)
    for male in ["Hans", "Robert", "Klaus"]:
        new = sur.name("P7", male, "de")
        assert gaz.gender(new) in ("m", None), (male, new)


def test_date_offset_is_whole_weeks_never_zero(sur: Surrogates) -> None:
    offsets = {sur.date_offset_days(f"P{i}") for i in range(300)}
    assert all(o % 7 == 0 and o != 0 and -364 <= o <= 357 for o in offsets)
    assert len(offsets) > 50


@pytest.mark.parametrize("language,first,second,days", [
    ("de", "03.02.2021", "17.02.2021", 14),
    ("de", "15. März 2021", "29. März 2021", 14),
    ("en", "03/14/2021", "03/20/2021", 6),
    ("en", "9/2/92", "9/9/92", 7),
    ("en", "July 29th, 2019", "August 5th, 2019", 7),
    ("en", "122898", "010499", 7),  # mmddyy run together: stays six digits across a year end
])
def test_date_shift_keeps_intervals_weekday_and_format(sur: Surrogates, language: str, first: str, second: str,
                                                       days: int) -> None:
    a, _ = sur.date("P3", first, language)
    b, _ = sur.date("P3", second, language)
    assert a != first and b != second

    def parse(value: str) -> dt.date:
        start, end, name = next(iter(find_dates(value, language)))
        assert (start, end) == (0, len(value)), value
        return _to_date(value, language)

    assert (parse(b) - parse(a)).days == days
    assert parse(a).weekday() == _to_date(first, language).weekday()
    shape = re.sub(r"[A-Za-zä]+", "W", re.sub(r"\d", "9", first))
    assert re.sub(r"[A-Za-zä]+", "W", re.sub(r"\d", "9", a)).count("9") in (shape.count("9"), shape.count("9") - 1,
                                                                            shape.count("9") + 1)


def _to_date(value: str, language: str) -> dt.date:
    """Read a rendered date back with the same format table the shifter uses."""
    from finetune.date_formats import FORMATS, MONTH_NUMBER, _year4

    for fmt in FORMATS:
        match = fmt.pattern.fullmatch(value)
        if match is None or language not in fmt.languages:
            continue
        g = match.groupdict()
        month = int(g["m"]) if g.get("m") else MONTH_NUMBER[g["mon"].lower()]
        return dt.date(_year4(g["y"], 40) if g.get("y") else 2000, month, int(g["d"]) if g.get("d") else 15)
    raise AssertionError(f"unreadable date {value!r}")


def test_partial_dates_and_placeholders(sur: Surrogates) -> None:
    year, parsed = sur.date("P3", "1993", "en")
    assert parsed and year in ("1992", "1994")
    assert sur.date("P3", "1980s", "en") == ("[DATE]", False)
    assert sur.date("P3", "Sankt Nimmerlein", "de") == ("[DATUM]", False)
    text, parsed = sur.date("P3", "19.3.", "de")
    assert parsed and re.fullmatch(r"\d{1,2}\.\d{1,2}\.", text)


def test_ages_over_89_become_90(sur: Surrogates) -> None:
    assert sur.replace("P1", PhiType.AGE, "92", "en") == ("90", True)
    assert sur.replace("P1", PhiType.AGE, "101", "de") == ("90", True)


@pytest.mark.parametrize("value", ["2021-004512", "0171 2345678", "(617) 555-0143", "A-202344102", "+43 333 775-8422"])
def test_ids_and_phones_keep_their_shape(sur: Surrogates, value: str) -> None:
    new, real = sur.replace("P1", PhiType.ID, value, "de")
    assert real and new != value and len(new) == len(value)
    assert re.sub(r"\d", "9", re.sub(r"[A-Z]", "A", new)) == re.sub(r"\d", "9", re.sub(r"[A-Z]", "A", value))
    if value.startswith("0"):
        assert new.startswith("0")


def test_key_is_required_and_never_shown() -> None:
    with pytest.raises(ValueError):
        Surrogates(b"")
    assert KEY.decode() not in repr(Surrogates(KEY))
