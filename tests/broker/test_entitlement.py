"""Entitlement: a user may use a pool when one of their directory groups is among the pool's."""

from dataclasses import dataclass, field

import pytest

from broker import errors
from broker.config import PoolSettings
from broker.entitlement import check_entitled, entitled_pools, is_entitled


@dataclass
class PoolRow:
    name: str
    groups: list[str] = field(default_factory=list)


MOIS = PoolSettings(name="mois-office", display_name="MOIS", groups=["mois"])
MOEF = PoolSettings(name="moef-office", display_name="MOEF", groups=["moef", "mof-legacy"])
SHARED = PoolSettings(name="shared", display_name="Shared", groups=["mois", "moef"])


def test_user_gets_the_pools_of_their_groups_in_configured_order():
    assert entitled_pools([MOIS, MOEF, SHARED], ["moef"]) == [MOEF, SHARED]


def test_any_one_matching_group_is_enough():
    assert entitled_pools([MOIS, MOEF], ["staff", "mof-legacy"]) == [MOEF]


def test_user_without_groups_gets_nothing():
    assert entitled_pools([MOIS, MOEF, SHARED], []) == []


def test_group_names_compare_case_insensitively_like_ldap_cn():
    assert is_entitled(MOIS, ["MOIS"])
    assert is_entitled(PoolRow("p", ["Mois "]), ["mois"])


def test_blank_group_never_matches_blank_pool_group():
    assert not is_entitled(PoolRow("p", [""]), [""])


def test_works_on_database_rows_too():
    assert entitled_pools([PoolRow("a", ["x"]), PoolRow("b", ["y"])], ["y"]) == [PoolRow("b", ["y"])]


def test_check_entitled_passes_silently_when_entitled():
    check_entitled(SHARED, ["moef"])


def test_check_entitled_refuses_with_403_naming_the_pool():
    with pytest.raises(errors.NotEntitled) as refused:
        check_entitled(MOIS, ["moef"])
    assert refused.value.status == 403
    assert refused.value.reason == "not_entitled"
    assert "mois-office" in refused.value.message
    assert refused.value.params == {"pool": "mois-office"}
