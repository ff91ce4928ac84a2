import copy
import sys

import pytest

from edge import config

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

_DEFAULT = tomllib.loads(config.default_text())


@pytest.fixture
def default_data() -> dict:
    """The embedded default head as a plain mapping, to modify in a test."""
    return copy.deepcopy(_DEFAULT)


@pytest.fixture(scope="session")
def cfg() -> config.HeadConfig:
    return config.load()


def with_changes(**sections) -> config.HeadConfig:
    """The default head with some keys of some sections replaced."""
    data = copy.deepcopy(_DEFAULT)
    for section, changes in sections.items():
        data[section].update(changes)
    return config.parse(data, "test.toml")
