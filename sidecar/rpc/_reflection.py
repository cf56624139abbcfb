"""gRPC server reflection, ``grpc.reflection.v1`` and ``v1alpha``, with the proto's comments.

grpcio-reflection serves only ``v1alpha``, and from the descriptors the
generated ``_pb2`` modules load, which carry no source info: ``grpcurl
describe`` then shows fields without the ranges, units and defaults the proto's
comments give. This module serves both versions (current tools ask for
``v1`` first, older ones only know ``v1alpha``; the two differ in their
package name only, so one servicer and the ``v1alpha`` messages serve both)
from ``descriptors.binpb``: the FileDescriptorSet that
``scripts/gen-protos.sh`` writes with ``--include_source_info
--include_imports`` next to the generated code, and checks for drift in CI.
Files outside that set (health, reflection itself) are served from their
generated descriptors, without comments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as pb

__all__ = ["DESCRIPTOR_SET", "SERVICE_NAMES", "enable_reflection"]

# The FileDescriptorSet of protos/, with source info, shipped as package data.
DESCRIPTOR_SET: Final = "descriptors.binpb"
_V1ALPHA: Final = pb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
_V1: Final = "grpc.reflection.v1.ServerReflection"
# The reflection services themselves, listed along with the served ones.
SERVICE_NAMES: Final = (_V1, _V1ALPHA)


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and itself.

    Every service named must be described by the shipped descriptor set or by
    a generated module already imported (health, reflection). Call it before
    the server starts.
    """
    files = _Files(resources.files("sidecar.rpc").joinpath(DESCRIPTOR_SET).read_bytes())
    names = tuple(sorted({*service_names, *SERVICE_NAMES}))
    for name in names:
        files.pool.FindServiceByName(name)  # raises KeyError for a service it cannot describe
    servicer = _Reflection(files, names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.info,
        request_deserializer=pb.ServerReflectionRequest.FromString,
        response_serializer=pb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(s, {"ServerReflectionInfo": handler})
            for s in SERVICE_NAMES
        ]
    )


class _Files:
    """Serialized FileDescriptorProtos by file name, and a pool to find symbols in."""

    def __init__(self, descriptor_set: bytes) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self._serialized: dict[str, bytes] = {}
        # protoc writes a set with --include_imports in dependency order.
        for proto in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file:
            _drop_default_json_names(proto.message_type)
            self._add(proto, proto.SerializeToString())
        v1alpha = _proto_of(pb.DESCRIPTOR)
        for proto in (_proto_of(health_pb2.DESCRIPTOR), v1alpha, _v1_reflection(v1alpha)):
            self._add(proto, None)

    def _add(self, proto: descriptor_pb2.FileDescriptorProto, serialized: bytes | None) -> None:
        if proto.name in self._serialized:
            return
        self.pool.Add(proto)
        self._serialized[proto.name] = serialized or proto.SerializeToString()

    def with_dependencies(self, file: FileDescriptor) -> list[bytes]:
        """Return ``file`` and every file it imports, directly or not, serialized."""
        seen: dict[str, None] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name not in seen:
                seen[current.name] = None
                pending.extend(current.dependencies)
        return [self._serialized[name] for name in seen]


def _drop_default_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """Clear every ``json_name`` that only repeats the default (lowerCamelCase of the name).

    protoc fills them in a descriptor set; the generated modules' descriptors
    leave them out, and grpcurl prints field names as the proto spells them
    (``task_id``) only without them, as it always has here.
    """
    for message in messages:
        for field in message.field:
            if field.json_name == _default_json_name(field.name):
                field.ClearField("json_name")
        _drop_default_json_names(message.nested_type)


def _default_json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _proto_of(descriptor: Any) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of a generated module's DESCRIPTOR (without source info).

    ``Any``: the grpcio stubs type their DESCRIPTORs as upb's class, protobuf's as its own.
    """
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _v1_reflection(
    v1alpha: descriptor_pb2.FileDescriptorProto,
) -> descriptor_pb2.FileDescriptorProto:
    """The v1 reflection file: v1alpha's, under v1's file and package names."""
    proto = descriptor_pb2.FileDescriptorProto()
    proto.CopyFrom(v1alpha)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return proto


class _Reflection:
    """Answers ServerReflectionInfo requests from :class:`_Files`."""

    def __init__(self, files: _Files, service_names: tuple[str, ...]) -> None:
        self._files = files
        self._services = pb.ListServiceResponse(
            service=[pb.ServiceResponse(name=name) for name in service_names]
        )

    async def info(
        self, requests: AsyncIterator[pb.ServerReflectionRequest], context: Any
    ) -> AsyncIterator[pb.ServerReflectionResponse]:
        async for request in requests:
            yield self._answer(request)

    def _answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        pool = self._files.pool
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                return pb.ServerReflectionResponse(
                    original_request=request, list_services_response=self._services
                )
            if kind == "file_by_filename":
                file = pool.FindFileByName(request.file_by_filename)
            elif kind == "file_containing_symbol":
                file = pool.FindFileContainingSymbol(request.file_containing_symbol)
            elif kind == "file_containing_extension":
                wanted = request.file_containing_extension
                message = pool.FindMessageTypeByName(wanted.containing_type)
                extension = pool.FindExtensionByNumber(message, wanted.extension_number)
                file = pool.FindFileContainingSymbol(extension.full_name)
            elif kind == "all_extension_numbers_of_type":
                message = pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = sorted(e.number for e in pool.FindAllExtensions(message))
                return pb.ServerReflectionResponse(
                    original_request=request,
                    all_extension_numbers_response=pb.ExtensionNumberResponse(
                        base_type_name=message.full_name, extension_number=numbers
                    ),
                )
            else:
                return _error(request, grpc.StatusCode.INVALID_ARGUMENT)
        except KeyError:
            return _error(request, grpc.StatusCode.NOT_FOUND)
        return pb.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=pb.FileDescriptorResponse(
                file_descriptor_proto=self._files.with_dependencies(file)
            ),
        )


def _error(
    request: pb.ServerReflectionRequest, code: grpc.StatusCode
) -> pb.ServerReflectionResponse:
    return pb.ServerReflectionResponse(
        original_request=request,
        error_response=pb.ErrorResponse(error_code=code.value[0], error_message=code.value[1]),
    )
