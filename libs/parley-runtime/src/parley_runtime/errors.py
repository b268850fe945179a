"""Domain errors and their gRPC status codes.

Domain code raises these; the server interceptor turns them into a status with the message,
so no service maps errors by hand and no unexpected exception leaks a stack trace to a caller.
"""

from __future__ import annotations

import grpc


class ParleyError(Exception):
    """Base class: an error that is safe to show to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidArgument(ParleyError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ParleyError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ParleyError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ParleyError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ParleyError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ParleyError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ParleyError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ParleyError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ParleyError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(ParleyError):
    code = grpc.StatusCode.ABORTED


RETRY_AFTER_TRAILER = "retry-after-s"
