//! The cluster stage: several tailfold instances acting as one tier, with
//! every fact they must agree on (placement, leaders, flush marks) kept in
//! etcd. A receiving instance routes each series to every replica of its
//! shard; leaders flush; rollup shares travel to the rollup's owner.
//! Without a `cluster:` section the stage folds locally (see [`stage`]).

pub mod change;
pub mod cli;
pub mod coordinator;
pub mod drain;
pub mod etcd;
pub mod handoff;
pub mod placement;
pub mod retries;
pub mod router;
pub mod rules;
pub mod service;
pub mod stage;
pub mod status;
pub mod view;
