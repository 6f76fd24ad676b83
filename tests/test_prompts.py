from moakit.messages import Message
from moakit.prompts import AGGREGATE_AND_SYNTHESIZE, inject_references, with_system_prompt

# Byte-for-byte the reference implementation's text (togethercomputer/MoA utils.py).
PAPER_PROMPT = """You have been provided with a set of responses from various open-source models to the latest user query. Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. Your response should not simply replicate the given answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the highest standards of accuracy and reliability.

Responses from models:"""  # noqa: E501


def test_prompt_is_verbatim() -> None:
    assert AGGREGATE_AND_SYNTHESIZE == PAPER_PROMPT


def test_references_prepend_new_system_message() -> None:
    conv = [Message.user("Q?")]
    out = inject_references(conv, ["a", "b"])
    assert out == [Message.system(PAPER_PROMPT + "\n1. a\n2. b"), Message.user("Q?")]
    assert conv == [Message.user("Q?")]  # caller's list untouched


def test_references_append_to_existing_system_message() -> None:
    conv = [Message.system("Be terse."), Message.user("Q?")]
    out = inject_references(conv, ["only"])
    assert out[0].text == "Be terse.\n\n" + PAPER_PROMPT + "\n1. only"
    assert conv[0].text == "Be terse."


def test_no_references_no_injection() -> None:
    conv = [Message.user("Q?")]
    assert inject_references(conv, []) == conv


def test_member_system_prompt_goes_first() -> None:
    conv = [Message.system("S"), Message.user("Q")]
    assert with_system_prompt(conv, "M")[0].text == "M\n\nS"
    assert with_system_prompt([Message.user("Q")], "M")[0] == Message.system("M")
