//! The Intel MultiProcessor Specification 1.4 tables, which tell a guest
//! without ACPI how many processors there are and how ISA interrupts reach
//! the IOAPIC.
//!
//! Layout: the 16-byte floating pointer structure (chapter 4.1) at
//! [`MPTABLE_START`] (in the BIOS area, 0xF0000..0xFFFFF, one of the places
//! the spec says to search), the configuration table header (4.2) right
//! after it, then its entries in the order of section 4.3: one processor per
//! vCPU, the ISA bus, the IOAPIC, one I/O interrupt assignment per IOAPIC
//! pin (ISA IRQ n on pin n, matching KVM's default GSI routing), and the two
//! local interrupt assignments (LINT0 ExtINT, LINT1 NMI). Both structures
//! carry checksums that make their bytes sum to zero.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::{HIMEM_START, IOAPIC_START, LAPIC_START, MPTABLE_START};

/// Pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;

const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature family 6 and feature flags FPU | APIC, as a generic
/// processor entry (Linux reads the real values from CPUID).
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const ISA_BUS_ID: u8 = 0;
const HEADER_LEN: usize = 44;
const FLOATING_LEN: usize = 16;

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than APIC IDs below the IOAPIC's.
    #[error("the MP table cannot describe {0} vCPUs (at most 254)")]
    TooManyCpus(u8),
    /// The tables would not fit the BIOS area.
    #[error("the MP table ({0} bytes) does not fit below 1 MiB")]
    TooLarge(usize),
    /// Guest memory refused the write.
    #[error("cannot write the MP table into guest memory: {0}")]
    GuestMemory(String),
}

/// The IOAPIC's ID: the first one after the vCPUs' APIC IDs.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs
/// (APIC IDs 0..cpus, vCPU 0 the bootstrap processor), placed at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let ioapic = ioapic_id(cpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(b"ISA   ");
    count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // Flags 0: polarity and trigger mode conform to the bus (ISA: edge, high).
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            pin,
            ioapic,
            pin,
        ]);
        count += 1;
    }
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        // Destination 0xFF: every local APIC.
        entries.extend([
            ENTRY_LOCAL_INTERRUPT,
            int_type,
            0,
            0,
            ISA_BUS_ID,
            0,
            0xff,
            lint,
        ]);
        count += 1;
    }

    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(table_len);
    header.extend(b"PCMP");
    header.extend((table_len as u16).to_le_bytes());
    header.extend([SPEC_REV, 0]); // checksum filled below
    header.extend(b"FERRITE ");
    header.extend(b"VMM         ");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend((LAPIC_START as u32).to_le_bytes());
    header.extend(0u16.to_le_bytes()); // extended table length
    header.extend([0u8, 0u8]); // extended checksum, reserved
    debug_assert_eq!(header.len(), HEADER_LEN);
    header.extend(entries);
    header[7] = checksum(&header);

    let table_addr = base + FLOATING_LEN as u64;
    let mut out = Vec::with_capacity(FLOATING_LEN + table_len);
    out.extend(b"_MP_");
    out.extend((table_addr as u32).to_le_bytes());
    // Length in 16-byte units, spec revision, checksum, five feature bytes
    // (all 0: a configuration table is present, no IMCR).
    out.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend(header);
    if base + out.len() as u64 > HIMEM_START {
        return Err(MpTableError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Writes the MP tables for `cpus` vCPUs at [`MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| MpTableError::GuestMemory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn checksums_and_pointers_are_right() {
        for cpus in [1u8, 2, 7, 254] {
            let t = build(cpus, MPTABLE_START).unwrap();
            let fp = &t[..16];
            assert_eq!(&fp[..4], b"_MP_");
            assert_eq!(sum(fp), 0, "floating pointer checksum");
            assert_eq!(fp[8], 1);
            assert_eq!(fp[9], 4);
            assert_eq!(u32_at(fp, 4) as u64, MPTABLE_START + 16);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16_at(table, 4) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table checksum");
            let count = u16_at(table, 34) as usize;
            assert_eq!(count, cpus as usize + 2 + IOAPIC_PINS as usize + 2);
            assert_eq!(u32_at(table, 36) as u64, LAPIC_START);
        }
    }

    #[test]
    fn entries_walk_in_spec_order() {
        let cpus = 3;
        let t = build(cpus, MPTABLE_START).unwrap();
        let table = &t[16..];
        let mut at = HEADER_LEN;
        let mut kinds = Vec::new();
        let mut processors = Vec::new();
        while at < table.len() {
            let kind = table[at];
            kinds.push(kind);
            let len = if kind == ENTRY_PROCESSOR { 20 } else { 8 };
            if kind == ENTRY_PROCESSOR {
                processors.push((table[at + 1], table[at + 3]));
            }
            if kind == ENTRY_IOAPIC {
                assert_eq!(table[at + 1], ioapic_id(cpus));
                assert_eq!(u32_at(table, at + 4) as u64, IOAPIC_START);
            }
            at += len;
        }
        assert_eq!(at, table.len());
        assert_eq!(processors, vec![(0, 3), (1, 1), (2, 1)]);
        let mut sorted = kinds.clone();
        sorted.sort_unstable();
        assert_eq!(kinds, sorted, "entries sorted by type");
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == ENTRY_LOCAL_INTERRUPT)
                .count(),
            2
        );
    }

    #[test]
    fn bad_counts_are_refused() {
        assert!(matches!(
            build(0, MPTABLE_START),
            Err(MpTableError::TooManyCpus(0))
        ));
        assert!(matches!(
            build(255, MPTABLE_START),
            Err(MpTableError::TooManyCpus(255))
        ));
    }
}
