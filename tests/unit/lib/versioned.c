/*
 * A library exporting one function in two versions, as glibc does (__libc_start_main@GLIBC_2.2.5
 * and @@GLIBC_2.34): the linker writes the versioned names, "ember_v@@EMBER_2" and
 * "ember_v@EMBER_1", into .symtab. test_symbolize expects both addresses named plain "ember_v".
 */
__attribute__((noinline)) int ember_v_new(int x)
{
	return x * 3 + 1;
}

__attribute__((noinline)) int ember_v_old(int x)
{
	return x * 2 + 1;
}

__asm__(".symver ember_v_new, ember_v@@EMBER_2");
__asm__(".symver ember_v_old, ember_v@EMBER_1");
