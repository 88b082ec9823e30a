//! Run-time SIMD detection. The level is read once and cached; setting
//! `DWARFSTAR_SIMD=scalar|avx2|avx512` caps it (tests use this to exercise
//! every path on one machine). Also `portable_kernel!`: how the scalar
//! level's portable kernels run compiled for AVX2 + FMA where present.

use std::sync::OnceLock;

/// The instruction-set level kernels are picked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable Rust; the reference every SIMD kernel is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (+ VNNI where present) on top of AVX2.
    Avx512,
    /// aarch64 NEON.
    Neon,
}

impl SimdLevel {
    /// The best level this CPU supports, ignoring any cap.
    pub fn detect_hw() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl");
            if avx512 {
                return SimdLevel::Avx512;
            }
            if avx2 {
                return SimdLevel::Avx2;
            }
            SimdLevel::Scalar
        }
        #[cfg(target_arch = "aarch64")]
        {
            SimdLevel::Neon
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            SimdLevel::Scalar
        }
    }

    /// Every level this machine can run, lowest first (Scalar is always there).
    pub fn available() -> Vec<SimdLevel> {
        let hw = Self::detect_hw();
        [
            SimdLevel::Scalar,
            SimdLevel::Avx2,
            SimdLevel::Avx512,
            SimdLevel::Neon,
        ]
        .into_iter()
        .filter(|l| match l {
            SimdLevel::Scalar => true,
            SimdLevel::Neon => hw == SimdLevel::Neon,
            SimdLevel::Avx2 => matches!(hw, SimdLevel::Avx2 | SimdLevel::Avx512),
            SimdLevel::Avx512 => hw == SimdLevel::Avx512,
        })
        .collect()
    }

    /// The level in use: the hardware's, capped by `DWARFSTAR_SIMD`.
    pub fn current() -> SimdLevel {
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let hw = Self::detect_hw();
            match std::env::var("DWARFSTAR_SIMD").ok().as_deref() {
                Some("scalar") => SimdLevel::Scalar,
                Some("avx2") if hw == SimdLevel::Avx512 => SimdLevel::Avx2,
                _ => hw,
            }
        })
    }
}

/// Whether the CPU has AVX2 and FMA (read once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// Defines a portable kernel `fn` whose body is compiled a second time for
/// AVX2 + FMA and run that way where the CPU has them. The result is the
/// same to the bit (LLVM does not reassociate float operations, and
/// `mul_add` is one fused operation either way); it is only faster (a
/// `mul_add` without FMA is a libm call). The scalar level's kernels are
/// written this way: they must give the SIMD levels' bits on every CPU, and
/// on x86 they should not take ten times as long doing so. The body is an
/// `#[inline(always)]` function, so it is really compiled inside the
/// target-feature function (a closure would not be).
macro_rules! portable_kernel {
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident $(<$g:ident: $bound:path>)? ($($a:ident: $t:ty),* $(,)?) -> $r:ty
        $body:block
    ) => {
        $(#[$m])*
        $vis fn $name $(<$g: $bound>)? ($($a: $t),*) -> $r {
            #[inline(always)]
            fn body $(<$g: $bound>)? ($($a: $t),*) -> $r $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn compiled_for_avx2 $(<$g: $bound>)? ($($a: $t),*) -> $r {
                    body $(::<$g>)? ($($a),*)
                }
                if $crate::simd::avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { compiled_for_avx2 $(::<$g>)? ($($a),*) };
                }
            }
            body $(::<$g>)? ($($a),*)
        }
    };
}
pub(crate) use portable_kernel;
