//! Scans `objdump -d` output for instructions the probe guest must never
//! contain: on hosts whose KVM emulates ring-0 code (see HOST-KVM.md) SSE,
//! `popcnt`, `xsave`/`xrstor`, `int3`, `clac` and `stac` end the guest with an
//! emulation failure, so the build refuses an image that has any of them.

/// Mnemonics refused outright (prefix-matched where a family shares a stem).
const FORBIDDEN_PREFIXES: &[&str] = &[
    "popcnt", "xsave", "xrstor", "fxsave", "fxrstor", "ldmxcsr", "stmxcsr", "mfence", "lfence",
    "sfence", "emms",
];
/// Mnemonics refused only as a whole word (`stac` must not catch `stack`).
const FORBIDDEN_WORDS: &[&str] = &["int3", "clac", "stac"];
/// Register names that mean SSE/AVX/MMX code.
const FORBIDDEN_REGISTERS: &[&str] = &["%xmm", "%ymm", "%zmm", "%mm"];

/// Returns the offending lines of a disassembly (empty when it is clean).
pub fn forbidden_lines(disassembly: &str) -> Vec<String> {
    disassembly
        .lines()
        .filter(|line| {
            // "  100015:\tf3 ab   \trep stos %eax,%es:(%edi)": the third
            // tab-separated field is the instruction text.
            let Some(insn) = line.split('\t').nth(2) else {
                return false;
            };
            // The instruction proper, without a trailing "<symbol>" or "# comment".
            let insn = insn.split(['<', '#']).next().unwrap_or("");
            let words: Vec<&str> = insn.split_whitespace().collect();
            words.iter().any(|w| {
                FORBIDDEN_WORDS.contains(w) || FORBIDDEN_PREFIXES.iter().any(|p| w.starts_with(p))
            }) || FORBIDDEN_REGISTERS.iter().any(|r| insn.contains(r))
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::forbidden_lines;

    #[test]
    fn clean_code_passes() {
        let text = "  100000:\tfa                   \tcli\n\
                    \x20 100015:\tf3 ab                \trep stos %eax,%es:(%edi)\n\
                    \x20 100980:\te8 06 fd ff ff       \tcall   100980 <stac_helper>\n\
                    \x20 100a00:\t48 89 e5             \tmov    %rsp,%rbp\n";
        assert!(forbidden_lines(text).is_empty());
    }

    #[test]
    fn each_forbidden_instruction_is_caught() {
        for insn in [
            "xorps  %xmm0,%xmm0",
            "movdqa %xmm1,(%rax)",
            "vmovdqu %ymm0,(%rdi)",
            "popcnt %rdi,%rax",
            "xsave  (%rdi)",
            "xrstor64 (%rdi)",
            "int3",
            "clac",
            "stac",
            "mfence",
            "movq   %mm0,%rax",
        ] {
            let line = format!("  101000:\t00 00                \t{insn}");
            assert_eq!(forbidden_lines(&line), vec![line.clone()], "{insn}");
        }
    }
}
