pub mod datapath;
pub mod model;
pub mod plan;
