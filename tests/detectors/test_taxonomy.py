import pytest

from geoincident.detectors import Taxonomy, normalise_tag
from geoincident.detectors.taxonomy import UNCLASSIFIED


@pytest.fixture(scope="module")
def taxonomy():
    return Taxonomy()


@pytest.mark.parametrize(
    "tag",
    ["#StreetLightOut", "street_light-out", "streetlightout", "STREETLIGHT OUT", "＃lightout"],
)
def test_tag_spellings_resolve_to_one_category(taxonomy, tag):
    assert taxonomy.resolve(None, [tag], None) == "streetlight_out"


def test_normalisation_is_nfkc_lowercase_without_separators():
    assert normalise_tag("#Ｓtreet_Light-Out ") == "streetlightout"


def test_explicit_category_wins_over_tags_and_text(taxonomy):
    assert taxonomy.resolve("Pothole", ["#lightout"], "gas leak") == "pothole"


def test_unknown_explicit_category_falls_back_to_tags(taxonomy):
    assert taxonomy.resolve("noise", ["#flood"], None) == "road_flooding"


def test_first_matching_tag_wins(taxonomy):
    assert taxonomy.resolve(None, ["#selfie", "#treedown", "#blackout"], None) == "downed_tree"


def test_text_keyword_is_a_case_insensitive_word_match(taxonomy):
    assert taxonomy.resolve(None, None, "The Traffic Light at 5th is dark") == "traffic_signal_out"
    # "potholes" is not the word "pothole": keywords match whole words only
    assert taxonomy.resolve(None, None, "streetlightning") == UNCLASSIFIED


def test_text_keyword_order_follows_the_taxonomy(taxonomy):
    assert taxonomy.resolve(None, None, "no power since the fallen tree") == "downed_tree"


def test_nothing_matching_is_unclassified(taxonomy):
    assert taxonomy.resolve(None, ["#nice"], "lovely day") == UNCLASSIFIED
    assert taxonomy.resolve(None, None, None) == UNCLASSIFIED
