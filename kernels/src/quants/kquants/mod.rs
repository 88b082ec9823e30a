//! (being written)

use crate::dispatch::TypeKernels;
use crate::simd::SimdLevel;
use crate::types::GgmlType;

pub(crate) fn kernels(_ty: GgmlType, _level: SimdLevel) -> Option<TypeKernels> {
    None
}
