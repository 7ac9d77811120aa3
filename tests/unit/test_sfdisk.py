"""sfdisk's JSON with the warning it prints ahead of it for a torn EBR (the fault campaign's arm64
seed 3869886963: `liveng run` could not read the disk), and output that holds no table."""

from __future__ import annotations

import pytest

from liveng import sfdisk

TABLE = '{\n   "partitiontable": {\n      "label": "dos",\n      "id": "0x76968484",\n      "partitions": [\n' \
        '         {"node": "disk.img7", "start": 1777791663, "size": 3369307883, "type": "6f"}\n      ]\n   }\n}\n'


def test_the_warning_ahead_of_the_json_is_kept_apart() -> None:
    text = "Invalid flag 0xed3b of EBR (for partition 7) will be corrected by w(rite).\n" + TABLE
    table, warnings = sfdisk.partition_table(text)
    assert table["id"] == "0x76968484" and table["partitions"][0]["start"] == 1777791663
    assert warnings == ["Invalid flag 0xed3b of EBR (for partition 7) will be corrected by w(rite)."]
    assert sfdisk.partition_table(TABLE) == (table, [])


@pytest.mark.parametrize("text", ["", "sfdisk: cannot open disk.img\n", '{"other": 1}', '{"partitiontable": 3}'])
def test_no_table(text: str) -> None:
    with pytest.raises(ValueError):
        sfdisk.partition_table(text)
