//! Every element of the public API file has a comment: the file is the
//! API's documentation (what `buf lint`'s COMMENTS rules check, here
//! without buf, from the compiled-in descriptor set's source info).

use std::collections::BTreeSet;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

const PUBLIC: &str = "clustersched/v1/scheduler.proto";

// Field numbers in descriptor.proto, which source-info paths are made of.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn public_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(sched_proto::reflection::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    set.file
        .into_iter()
        .find(|f| f.name() == PUBLIC)
        .expect("the public file is in the set")
}

/// Every element's source path with its name, for the error message.
fn elements(file: &FileDescriptorProto) -> Vec<(Vec<i32>, String)> {
    fn enums(
        out: &mut Vec<(Vec<i32>, String)>,
        path: Vec<i32>,
        e: &prost_types::EnumDescriptorProto,
    ) {
        out.push((path.clone(), e.name().to_string()));
        for (i, v) in e.value.iter().enumerate() {
            out.push((
                [&path[..], &[ENUM_VALUE, i as i32]].concat(),
                v.name().to_string(),
            ));
        }
    }
    fn messages(
        out: &mut Vec<(Vec<i32>, String)>,
        path: Vec<i32>,
        m: &prost_types::DescriptorProto,
    ) {
        // Map fields' entry messages are generated, with nothing to comment.
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            return;
        }
        out.push((path.clone(), m.name().to_string()));
        for (i, f) in m.field.iter().enumerate() {
            let name = format!("{}.{}", m.name(), f.name());
            out.push(([&path[..], &[MESSAGE_FIELD, i as i32]].concat(), name));
        }
        for (i, n) in m.nested_type.iter().enumerate() {
            messages(out, [&path[..], &[MESSAGE_NESTED, i as i32]].concat(), n);
        }
        for (i, e) in m.enum_type.iter().enumerate() {
            enums(out, [&path[..], &[MESSAGE_ENUM, i as i32]].concat(), e);
        }
    }
    let mut out = Vec::new();
    for (i, m) in file.message_type.iter().enumerate() {
        messages(&mut out, vec![FILE_MESSAGE, i as i32], m);
    }
    for (i, e) in file.enum_type.iter().enumerate() {
        enums(&mut out, vec![FILE_ENUM, i as i32], e);
    }
    for (i, s) in file.service.iter().enumerate() {
        out.push((vec![FILE_SERVICE, i as i32], s.name().to_string()));
        for (j, m) in s.method.iter().enumerate() {
            let name = format!("{}.{}", s.name(), m.name());
            out.push((vec![FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32], name));
        }
    }
    out
}

#[test]
fn every_message_field_enum_value_service_and_rpc_of_the_public_api_has_a_comment() {
    let file = public_file();
    let info = file
        .source_code_info
        .as_ref()
        .expect("protox keeps source info");
    let commented: BTreeSet<&[i32]> = info
        .location
        .iter()
        .filter(|l| !l.leading_comments().trim().is_empty())
        .map(|l| l.path.as_slice())
        .collect();
    let all = elements(&file);
    assert!(all.len() > 100, "too few elements found: {}", all.len());
    let missing: Vec<&str> = all
        .iter()
        .filter(|(path, _)| !commented.contains(path.as_slice()))
        .map(|(_, name)| name.as_str())
        .collect();
    assert!(missing.is_empty(), "no comment on: {missing:?}");
}

#[test]
fn times_and_durations_are_the_well_known_types() {
    // No `*_ms` integers left in the public API (AIP-142).
    let file = public_file();
    for m in &file.message_type {
        for f in &m.field {
            let name = f.name();
            assert!(
                !(name.ends_with("_ms") || name.contains("unix")),
                "{}.{name} is a time or duration in integers",
                m.name()
            );
            if name.ends_with("_time") {
                assert_eq!(
                    f.type_name(),
                    ".google.protobuf.Timestamp",
                    "{}.{name}",
                    m.name()
                );
            }
        }
    }
}
