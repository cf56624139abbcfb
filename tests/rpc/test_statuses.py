"""DashScope's error codes reach callers with the status and retry hint the error table says.

One test per row of ``UPSTREAM_CODES`` (docs/dashscope-protocol.md §13), each
through a real call: the emulator fails the task at start with that code.
"""

from __future__ import annotations

import grpc
import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.emulator import Emulator
from sidecar.rpc import UPSTREAM_CODES, UpstreamCode, upstream_rule
from sidecar.server import SidecarServer
from tests.helpers import assert_pool_settles


def _example(row: UpstreamCode) -> tuple[str, str]:
    """A concrete code and message that the row matches."""
    code = row.code[:-1] + "Example" if row.code.endswith("*") else row.code
    return code, row.message or "injected by the test"


@pytest.mark.parametrize("row", UPSTREAM_CODES, ids=lambda r: f"{r.code}:{r.message[:12]}")
async def test_each_dashscope_code_maps_to_its_status_and_retry_hint(
    sidecar: SidecarServer, emulator: Emulator, row: UpstreamCode
) -> None:
    code, message = _example(row)
    assert upstream_rule(code, message) is row  # the row is reachable: no earlier row shadows it
    emulator.update_knobs(fail_start_every=1, fail_code=code, fail_message=message)
    async with AsyncSynthesizerClient(sidecar.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.synthesize("Hello.")
    error = info.value
    assert error.code() is row.status, error.details()
    assert code in (error.details() or "")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reason = error_details_pb2.ErrorInfo()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(reason) for d in status.details)
    assert reason.reason == code
    assert reason.metadata["task_id"]
    has_retry = any(d.Unpack(retry) for d in status.details)
    assert has_retry is (row.retry_after_s is not None)
    if has_retry:
        assert retry.retry_delay.ToMilliseconds() == int(row.retry_after_s * 1000)  # type: ignore[operator]
    emulator.update_knobs(fail_start_every=0)
    await assert_pool_settles(sidecar, emulator)


async def test_an_unknown_code_is_unknown_without_retry_hint_but_keeps_the_code(
    sidecar: SidecarServer, emulator: Emulator
) -> None:
    emulator.update_knobs(fail_start_every=1, fail_code="BrandNewCode", fail_message="new")
    async with AsyncSynthesizerClient(sidecar.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.synthesize("Hello.")
    assert info.value.code() is grpc.StatusCode.UNKNOWN
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None
    reason = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(reason) for d in status.details)
    assert reason.reason == "BrandNewCode"
    assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


def test_quota_used_up_is_not_throttling() -> None:
    """Throttling.AllocationQuota never recovers by retrying: no RetryInfo, unlike RateQuota."""
    assert upstream_rule("Throttling.AllocationQuota").retry_after_s is None
    assert upstream_rule("Throttling.AllocationQuota").status is grpc.StatusCode.FAILED_PRECONDITION
    assert upstream_rule("Throttling.RateQuota").retry_after_s is not None
    assert upstream_rule("Throttling.BurstRate").status is grpc.StatusCode.RESOURCE_EXHAUSTED
