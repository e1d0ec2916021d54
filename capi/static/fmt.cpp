// {fmt}'s compiled part in one object, for a fully static program: Debian ships libfmt only as
// a shared library, so scripts/ci-arm.sh links this object with libminfer.a into the static
// aarch64 generation program. Every other build links libfmt.so.
// Including format-inl.h without FMT_HEADER_ONLY defines fmt's out-of-line functions (vformat,
// throw_format_error, is_printable, ...) with external linkage, and the templates below are the
// instantiations libfmt carries for that mode (the list of fmt 9's src/format.cc). Built once
// per static link, instead of fmt's header-only mode in every library object (that mode costs
// about 3 s of compile time per object that includes engine/error.h).
#include <fmt/format-inl.h>

FMT_BEGIN_NAMESPACE
namespace detail {
template FMT_API auto dragonbox::to_decimal(float x) noexcept -> dragonbox::decimal_fp<float>;
template FMT_API auto dragonbox::to_decimal(double x) noexcept -> dragonbox::decimal_fp<double>;
template FMT_API locale_ref::locale_ref(const std::locale& loc);
template FMT_API auto locale_ref::get<std::locale>() const -> std::locale;
template FMT_API auto thousands_sep_impl<char>(locale_ref) -> thousands_sep_result<char>;
template FMT_API auto thousands_sep_impl<wchar_t>(locale_ref) -> thousands_sep_result<wchar_t>;
template FMT_API auto decimal_point_impl(locale_ref) -> char;
template FMT_API auto decimal_point_impl(locale_ref) -> wchar_t;
template FMT_API void buffer<char>::append(const char*, const char*);
template FMT_API void buffer<wchar_t>::append(const wchar_t*, const wchar_t*);
template FMT_API void vformat_to(buffer<char>&, string_view,
                                 basic_format_args<FMT_BUFFER_CONTEXT(char)>, locale_ref);
}  // namespace detail
FMT_END_NAMESPACE
