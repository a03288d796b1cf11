//! virtio-blk (virtio 1.2 §5.2).

pub mod request;
