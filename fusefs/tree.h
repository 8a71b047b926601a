/* tree.h - the directory tree a thaw mount shows, built from store listings.
 *
 * Objects under the mount's prefix are files and common prefixes ("a/") are
 * directories.  A directory is listed once, on first visit (store_list with
 * delimiter "/", all pages); the tree is a snapshot of the store as it was
 * then and never forgets a node, so an inode number stays valid for the life
 * of the mount and the kernel may cache entries and attributes for long.
 * thaw's own chunk store (".thaw/") is hidden at every level.
 *
 * Inode numbers index a two-level table that readers walk without a lock:
 * slots are published with release stores and never move. */
#ifndef THAW_FUSEFS_TREE_H
#define THAW_FUSEFS_TREE_H

#include <pthread.h>
#include <stdint.h>

#include "../objstore/store.h"

struct tfile;

struct tnode {
	uint64_t ino;
	struct tnode *parent;
	char *name;          /* "" for the root */
	char *key;           /* directory: full prefix ("" or ending in '/'); file: full key */
	int is_dir;
	uint64_t list_size;  /* from the listing (for an image: its index's size) */
	int64_t mtime;

	/* directories */
	int listed;          /* kids are valid (acquire-load it) */
	struct tnode **kids; /* sorted by name */
	size_t nkids;
	struct store *dstore;/* file:// only: a store rooted at this directory */

	/* files */
	struct tfile *f;
	uint64_t nlookup;    /* the kernel's references (atomic) */
};

#define TREE_L1 65536
#define TREE_L2 4096

struct tree {
	struct store *s;         /* the mount's store */
	struct thaw_url url;     /* where the root is: file:// root is the mount dir */
	struct store_config scfg;/* for the per-directory stores of file:// */
	int per_dir_stores;      /* file://: images keep their chunks per directory */
	pthread_mutex_t mu;      /* listing, table growth, per-directory stores */
	struct tnode **tab[TREE_L1];
	uint64_t next_ino;       /* atomic */
	struct tnode *root;
};

/* Set up the tree of location u (a prefix) in store s; lists nothing yet. */
int tree_init(struct tree *t, struct store *s, const struct thaw_url *u, const struct store_config *scfg);
/* Free every node and the per-directory stores (not t->s, not the files). */
void tree_destroy(struct tree *t);

/* The node of an inode number, or NULL. */
struct tnode *tree_get(struct tree *t, uint64_t ino);
/* Make sure dir has been listed; 0 or <0 + err_msg naming the prefix. */
int tree_list(struct tree *t, struct tnode *dir);
/* A child of a listed directory by name, or NULL. */
struct tnode *tree_child(const struct tnode *dir, const char *name);
/* Where a file's bytes are: the store and the key to hand to blob_open. */
int tree_file_location(struct tree *t, struct tnode *file, struct store **s, char *key, size_t keylen);
/* The path of n relative to the mount root ("" for the root). */
void tree_path(const struct tnode *n, char *buf, size_t len);
/* Highest inode number handed out so far. */
uint64_t tree_max_ino(struct tree *t);

#endif
