//! The instruction sets the JIT compiles for: the host, or a named class of x86-64 CPU, so
//! that the code for AVX2-only machines can be examined (and tested) on any machine.

use crate::{Error, Result};
use cranelift_codegen::isa::{self, TargetIsa};
use cranelift_codegen::settings::Configurable;

/// The instruction set a [`Jit`](super::Jit) compiles for. Every target gets 128-bit vector
/// code; they differ in encodings (VEX or EVEX), in the instructions Cranelift may choose, and
/// in the vector registers it allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The CPU this process runs on, with every SIMD feature Cranelift can use enabled.
    Host,
    /// x86-64 with AVX2, FMA, BMI1/2 and LZCNT but no AVX-512 (Haswell, Zen 1–3: most cloud
    /// VMs, desktops and laptops).
    X64Avx2,
    /// x86-64 with AVX-512 F, VL and DQ besides the AVX2 set (Skylake-SP and later, Zen 4).
    X64Avx512,
}

/// Cranelift's x86-64 flags of the AVX2 class.
const X64_AVX2_FLAGS: [&str; 11] = [
    "has_sse3",
    "has_ssse3",
    "has_sse41",
    "has_sse42",
    "has_popcnt",
    "has_avx",
    "has_avx2",
    "has_fma",
    "has_bmi1",
    "has_bmi2",
    "has_lzcnt",
];

/// The flags the AVX-512 class adds.
const X64_AVX512_FLAGS: [&str; 3] = ["has_avx512f", "has_avx512vl", "has_avx512dq"];

impl Target {
    /// Cranelift's ISA builder for this target, its flags set.
    pub(super) fn isa_builder(self) -> Result<isa::Builder> {
        let unsupported = |message: String| Error::HostUnsupported { message };
        match self {
            Target::Host => {
                cranelift_native::builder().map_err(|message| unsupported(message.to_string()))
            }
            Target::X64Avx2 | Target::X64Avx512 => {
                // On an x86-64 host, the host's own triple (so its calling convention: the
                // kernels are called as `extern "C"`), with no feature detected but those set
                // below; elsewhere any x86-64 triple, for code that is only examined.
                let mut builder = if cfg!(target_arch = "x86_64") {
                    cranelift_native::builder_with_options(false)
                        .map_err(|message| unsupported(message.to_string()))?
                } else {
                    isa::lookup_by_name("x86_64-unknown-linux-gnu")
                        .map_err(|e| unsupported(e.to_string()))?
                };
                let extra: &[&str] = if self == Target::X64Avx512 {
                    &X64_AVX512_FLAGS
                } else {
                    &[]
                };
                for flag in X64_AVX2_FLAGS.iter().chain(extra) {
                    builder
                        .enable(flag)
                        .map_err(|e| unsupported(format!("{flag}: {e}")))?;
                }
                Ok(builder)
            }
        }
    }

    /// Whether this host runs code compiled for the target (detected at run time).
    pub fn runs_here(self) -> bool {
        match self {
            Target::Host => true,
            #[cfg(target_arch = "x86_64")]
            Target::X64Avx2 | Target::X64Avx512 => {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("bmi1")
                    && is_x86_feature_detected!("bmi2")
                    && is_x86_feature_detected!("lzcnt")
                    && is_x86_feature_detected!("popcnt")
                    && is_x86_feature_detected!("sse4.2");
                let avx512 = is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq");
                avx2 && (self == Target::X64Avx2 || avx512)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Target::X64Avx2 | Target::X64Avx512 => false,
        }
    }
}

/// The vector registers Cranelift allocates on `isa`'s architecture: x86-64 code uses
/// xmm0–15 whatever the CPU (Cranelift 0.135 never allocates xmm16–31, even with AVX-512);
/// AArch64, RISC-V and s390x have 32.
pub(super) fn vector_registers(isa: &dyn TargetIsa) -> usize {
    match isa.name() {
        "x64" => 16,
        _ => 32,
    }
}

/// `isa`'s architecture and enabled feature flags, e.g. `x86_64 sse3 ssse3 sse41 sse42 avx
/// avx2 fma`: the SIMD-relevant flags only (bit-manipulation flags are left out).
pub(super) fn describe(isa: &dyn TargetIsa) -> String {
    let mut text = isa.triple().architecture.to_string();
    for flag in isa.isa_flags() {
        let simd = [
            "has_sse", "has_ssse", "has_avx", "has_fma", "has_neon", "has_fp16",
        ];
        if flag.as_bool() == Some(true) && simd.iter().any(|p| flag.name.starts_with(p)) {
            text.push(' ');
            text.push_str(flag.name.trim_start_matches("has_"));
        }
    }
    text
}
