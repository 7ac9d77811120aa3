"""The image the layout tests read: built offline once per test module."""

from __future__ import annotations

import pytest

from tests.layout import image


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> image.Built:
    return image.make(tmp_path_factory.mktemp("layout"))
