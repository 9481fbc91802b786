"""GrpcError: the AioRpcError-shaped API, str/repr, and pickling (Wove ships errors)."""

from __future__ import annotations

import copy
import pickle

import pytest

from wove_h2grpc import GrpcError, StatusCode


def _full_error() -> GrpcError:
    return GrpcError(
        StatusCode.UNAVAILABLE,
        "HTTP status 503 \u263a",
        initial_metadata=(("x-a", "1"),),
        trailing_metadata=(("x-b", "2"), ("x-c-bin", b"\x00\xff")),
        debug_error_string="peer=127.0.0.1:1 stream=1",
        request_sent=False,
        h2_error_code=7,  # REFUSED_STREAM
    )


def test_accessors() -> None:
    err = _full_error()
    assert isinstance(err, Exception)
    assert err.code() is StatusCode.UNAVAILABLE
    assert err.details() == "HTTP status 503 \u263a"
    assert err.initial_metadata() == (("x-a", "1"),)
    assert err.trailing_metadata() == (("x-b", "2"), ("x-c-bin", b"\x00\xff"))
    assert err.debug_error_string() == "peer=127.0.0.1:1 stream=1"
    assert err.request_sent is False
    assert err.h2_error_code == 7


def test_defaults_and_int_code() -> None:
    err = GrpcError(14)  # type: ignore[arg-type]
    assert err.code() is StatusCode.UNAVAILABLE
    assert err.details() == ""
    assert err.initial_metadata() == ()
    assert err.trailing_metadata() == ()
    # Without an explicit debug string, it still says what happened.
    assert err.debug_error_string() == "UNAVAILABLE: "
    # Without a cause, nothing is claimed: it may have run, and no HTTP/2 code ended it.
    assert err.request_sent is None
    assert err.h2_error_code is None


def test_metadata_lists_become_tuples() -> None:
    err = GrpcError(
        StatusCode.INTERNAL,
        "x",
        initial_metadata=[("k", "v")],  # type: ignore[arg-type]
        trailing_metadata=[("t", "u")],  # type: ignore[arg-type]
    )
    assert err.initial_metadata() == (("k", "v"),)
    assert err.trailing_metadata() == (("t", "u"),)


def test_invalid_code_is_refused() -> None:
    with pytest.raises(ValueError, match="17"):
        GrpcError(17, "x")  # type: ignore[arg-type]


def test_str_and_repr_name_code_and_details() -> None:
    err = GrpcError(StatusCode.DEADLINE_EXCEEDED, "deadline of 0.5 s exceeded")
    assert "DEADLINE_EXCEEDED" in str(err)
    assert "deadline of 0.5 s exceeded" in str(err)
    assert repr(err) == "GrpcError(StatusCode.DEADLINE_EXCEEDED, 'deadline of 0.5 s exceeded')"


def test_args_are_code_and_details() -> None:
    """``Exception.args`` carries the code and details, so tracebacks and logs show them."""
    assert GrpcError(StatusCode.NOT_FOUND, "nope").args == (StatusCode.NOT_FOUND, "nope")
    assert GrpcError(5).args == (StatusCode.NOT_FOUND, "")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol: int) -> None:
    err = _full_error()
    back = pickle.loads(pickle.dumps(err, protocol=protocol))
    assert type(back) is GrpcError
    assert back.code() is StatusCode.UNAVAILABLE
    assert back.details() == err.details()
    assert back.initial_metadata() == err.initial_metadata()
    assert back.trailing_metadata() == err.trailing_metadata()
    assert back.debug_error_string() == err.debug_error_string()
    assert back.request_sent is False
    assert back.h2_error_code == 7
    assert str(back) == str(err)


def test_copy_and_deepcopy() -> None:
    err = _full_error()
    for clone in (copy.copy(err), copy.deepcopy(err)):
        assert clone.code() is err.code()
        assert clone.details() == err.details()
        assert clone.trailing_metadata() == err.trailing_metadata()
        assert (clone.request_sent, clone.h2_error_code) == (False, 7)


def test_pickle_without_debug_string_keeps_default() -> None:
    err = GrpcError(StatusCode.CANCELLED, "gone")
    back = pickle.loads(pickle.dumps(err))
    assert back.debug_error_string() == "CANCELLED: gone"
    assert (back.request_sent, back.h2_error_code) == (None, None)


@pytest.mark.parametrize("request_sent", [True, False, None])
def test_pickle_keeps_whether_the_request_was_sent(request_sent: object) -> None:
    err = GrpcError(StatusCode.UNAVAILABLE, "x", request_sent=request_sent)  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(err)).request_sent is request_sent
