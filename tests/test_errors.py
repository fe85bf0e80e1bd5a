from __future__ import annotations

import pytest

import charlstm
from charlstm.errors import CharLSTMError


def test_is_an_exception_with_its_message():
    error = CharLSTMError("the text is empty; give a longer one")
    assert isinstance(error, Exception)
    assert str(error) == "the text is empty; give a longer one"


def test_is_the_type_the_package_exports():
    assert charlstm.CharLSTMError is CharLSTMError
    with pytest.raises(charlstm.CharLSTMError):
        raise CharLSTMError("x")
