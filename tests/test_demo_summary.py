"""The demo table's verdict line: whether one run shows the paper's order, concept > CRPN > baseline."""

from tools.demo_summary import paper_order


def test_order_shown_with_the_gap():
    line = paper_order(40.0, 35.5, 30.25)
    assert "(concept > CRPN > baseline): shown here (40.00 / 35.50 / 30.25 %; CRPN - baseline +5.25 points)" in line


def test_order_not_shown_when_any_pair_is_out_of_order_or_tied():
    assert "NOT shown" in paper_order(30.48, 27.38, 29.05)  # CRPN below the baseline
    assert "CRPN - baseline -1.67 points" in paper_order(30.48, 27.38, 29.05)
    assert "NOT shown" in paper_order(30.0, 31.0, 29.0)  # CRPN above its teacher
    assert "NOT shown" in paper_order(35.0, 35.0, 30.0)  # a tie is not an order
