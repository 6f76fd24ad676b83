import pytest

from moakit import MissingKeyError, Stack, parse_config
from moakit.messages import as_messages
from moakit.models.anthropic_wire import split_system


def test_system_messages_lift_into_system_param() -> None:
    system, turns = split_system(
        as_messages(
            [
                {"role": "system", "content": "A"},
                {"role": "system", "content": "B"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "more"},
            ]
        )
    )
    assert system == "A\n\nB"
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]


def test_missing_anthropic_key_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = parse_config(
        {
            "defaults": {"provider": "anthropic"},
            "layers": [[{"model": "claude-x"}]],
            "aggregator": {"model": "claude-y"},
        }
    )
    with pytest.raises(MissingKeyError, match="ANTHROPIC_API_KEY"):
        Stack(cfg)
