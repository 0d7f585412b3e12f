//! `grpc.reflection.v1` for every server: clients that were not built from
//! our `.proto` files (grpcurl, Postman, any generic client) can list the
//! services and read their messages.

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// The API's `FileDescriptorSet`, encoded (written by `build.rs`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The reflection service, describing our API, `grpc.health.v1` and
/// itself.
pub fn service() -> ServerReflectionServer<impl ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        // Invariant: both sets are compiled in and decode (checked by the
        // test below and by every server's start).
        .expect("the compiled-in descriptor sets decode")
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn the_descriptor_set_decodes_and_holds_the_api() {
        let _ = super::service();
        let text = String::from_utf8_lossy(super::FILE_DESCRIPTOR_SET);
        assert!(
            text.contains("SchedulerService"),
            "no SchedulerService service"
        );
    }

    #[test]
    fn the_descriptor_set_holds_the_well_known_types_the_api_imports() {
        // A reflection client resolves every import of the API's files, so
        // the set must carry them (protox includes imports).
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        for wanted in [
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "clustersched/v1/scheduler.proto",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
    }
}
