//! The `baton` command's client-side subcommands: `up` (a local three-node cluster), `cluster status`, and the
//! client commands (`def`, `workflow`, `worker exec`).

pub mod commands;
pub mod status;
pub mod up;
