//! Everything that talks to `/dev/kvm`: the VM, its vCPUs, and the tables
//! (CPUID, MSRs, MP table) they are configured from.

pub mod cpuid;
pub mod mptable;
pub mod msrs;
pub mod vcpu;
pub mod vm;

/// A KVM call that failed, named after the ioctl.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    /// An ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The ioctl, e.g. "KVM_CREATE_VM".
        op: &'static str,
        /// The host error.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than it was given.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs")]
    PartialMsrs {
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// A KVM structure could not be built (e.g. too many entries).
    #[error("cannot build the {what} for KVM: {detail}")]
    Build {
        /// Which structure.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Shorthand for mapping an ioctl's error.
pub(crate) fn ioctl(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { op, source }
}
