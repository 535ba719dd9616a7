//! The `baton` command's client-side subcommands: `up` (a local three-node cluster) and `cluster status`.

pub mod status;
pub mod up;
