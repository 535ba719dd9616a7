//! Definitions in Conductor's own JSON format (as Conductor serialises them, defaults and all) load unchanged and
//! run: a static fork, a SWITCH with a TERMINATE default, a DO_WHILE with INLINE, a sub-workflow, a dynamic fork.
//! The documents live in tests/fixtures/conductor/.

use serde_json::{json, Value};

use super::World;
use crate::engine::definitions::{parse_json, TaskDef, WorkflowDef};
use crate::engine::model::WorkflowStatus;
use crate::engine::{Command, CommandResponse};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/conductor/", $name))
    };
}

fn world() -> World {
    let mut w = World::new();
    let defs: Vec<TaskDef> = parse_json(fixture!("taskdefs.json")).expect("Conductor task defs parse");
    assert_eq!(w.run(Command::RegisterTaskDefs { defs }), CommandResponse::Done);
    for doc in [
        fixture!("image_multiple_convert_resize_fork.json"),
        fixture!("shipping_switch.json"),
        fixture!("do_while_items.json"),
        fixture!("parent_with_sub_workflow.json"),
        fixture!("dynamic_fork.json"),
    ] {
        let def: WorkflowDef = parse_json(doc).expect("Conductor workflow def parses");
        let name = def.name.clone();
        let response = w.run(Command::RegisterWorkflowDef { def, overwrite: false });
        assert_eq!(response, CommandResponse::Done, "registering {name}");
    }
    w
}

#[test]
fn documents_round_trip_without_losing_fields() {
    let text = fixture!("image_multiple_convert_resize_fork.json");
    let def: WorkflowDef = parse_json(text).expect("parses");
    let original: Value = serde_json::from_str(text).expect("json");
    let again = serde_json::to_value(&def).expect("serialises");
    // Every field the document had is still there with its value, at every depth (defaults Baton adds may come
    // on top); an empty list or map, or a false flag, may be left out, which Conductor reads the same way.
    assert_covers(&original, &again, "");
}

fn assert_covers(original: &Value, again: &Value, path: &str) {
    let default_like = |v: &Value| match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        _ => false,
    };
    match (original, again) {
        (Value::Object(o), Value::Object(a)) => {
            for (k, v) in o {
                match a.get(k) {
                    None if default_like(v) => {}
                    None => panic!("{path}.{k} was lost"),
                    Some(got) => assert_covers(v, got, &format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(o), Value::Array(a)) => {
            assert_eq!(o.len(), a.len(), "{path}: list length");
            for (i, (x, y)) in o.iter().zip(a).enumerate() {
                assert_covers(x, y, &format!("{path}[{i}]"));
            }
        }
        (x, y) => assert_eq!(x, y, "{path}"),
    }
}

#[test]
fn static_fork_document_runs_to_completion() {
    let mut w = world();
    let id = w.start("image_multiple_convert_resize_fork", json!({"fileLocation": "s3://in.png"}));
    assert_eq!(w.pending(&id), ["image_convert_resize_png_300x300_ref", "image_convert_resize_jpg_200x200_ref"]);
    assert_eq!(w.task(&id, "image_convert_resize_png_300x300_ref").input_data["outputWidth"], json!(300));
    w.complete(&id, "image_convert_resize_png_300x300_ref", json!({"fileLocation": "/tmp/a.png"}));
    w.complete(&id, "image_convert_resize_jpg_200x200_ref", json!({"fileLocation": "/tmp/a.jpg"}));
    w.complete(&id, "upload_toS3_png_300x300_ref", json!({"fileLocation": "s3://out/a.png"}));
    w.complete(&id, "upload_toS3_jpg_200x200_ref", json!({"fileLocation": "s3://out/a.jpg"}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.wf(&id).output["fileLocationPng"], json!("s3://out/a.png"));
}

#[test]
fn switch_document_ships_or_terminates() {
    let mut w = world();
    let id = w.start("shipping_workflow", json!({"service": "fedex", "address": "1 Main St"}));
    assert_eq!(w.pending(&id), ["ship_via_fedex"]);
    w.complete(&id, "ship_via_fedex", json!({}));
    w.complete(&id, "notify", json!({}));
    assert_eq!(w.wf(&id).output["carrier"], json!("fedex"));
    let id = w.start("shipping_workflow", json!({"service": "pigeon"}));
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    assert_eq!(w.wf(&id).reason_for_incompletion.as_deref(), Some("unsupported carrier"));
}

#[test]
fn do_while_document_iterates_with_inline_tasks() {
    let mut w = world();
    let id = w.start("do_while_items", json!({"count": 3}));
    for i in 1..=3 {
        w.complete(&id, &format!("process_item__{i}"), json!({"n": i}));
    }
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.wf(&id).output, super::obj(json!({"iterations": 3, "last": 30})));
}

#[test]
fn sub_workflow_document_runs_the_fork_as_a_child() {
    let mut w = world();
    let id = w.start("parent_with_sub_workflow", json!({"fileLocation": "s3://in.png"}));
    let child = w.task(&id, "sub_flow_ref").sub_workflow_id.clone().expect("child");
    for (r, out) in [
        ("image_convert_resize_png_300x300_ref", "/a.png"),
        ("image_convert_resize_jpg_200x200_ref", "/a.jpg"),
        ("upload_toS3_png_300x300_ref", "s3://a.png"),
        ("upload_toS3_jpg_200x200_ref", "s3://a.jpg"),
    ] {
        w.complete(&child, r, json!({"fileLocation": out}));
    }
    assert_eq!(w.status(&child), WorkflowStatus::Completed);
    assert_eq!(w.task(&id, "notify").input_data["png"], json!("s3://a.png"));
}

#[test]
fn dynamic_fork_document_fans_out_what_the_input_says() {
    let mut w = world();
    let id = w.start(
        "dynamic_fork_example",
        json!({"dynamicTasks": [
                {"name": "process_item", "taskReferenceName": "item_1", "type": "SIMPLE"},
                {"name": "process_item", "taskReferenceName": "item_2", "type": "SIMPLE"},
                {"name": "process_item", "taskReferenceName": "item_3", "type": "SIMPLE"}],
               "dynamicTasksInput": {"item_1": {"v": 1}, "item_2": {"v": 2}, "item_3": {"v": 3}}}),
    );
    assert_eq!(w.pending(&id), ["item_1", "item_2", "item_3"]);
    for r in ["item_3", "item_1", "item_2"] {
        w.complete(&id, r, json!({"done": r}));
    }
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.task(&id, "dynamic_join").output_data.len(), 3);
}
