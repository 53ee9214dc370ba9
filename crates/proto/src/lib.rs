//! The RKMS gRPC API, generated from `proto/rkms/v1/rkms.proto` at build time without
//! `protoc`: the messages, the tonic server and client, and the encoded file descriptor set
//! that server reflection answers from.

/// Version 1 of the API, package `rkms.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("rkms.v1");
}

/// The encoded `FileDescriptorSet` of the API (with the well-known types it imports), for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rkms_descriptor.bin"));
